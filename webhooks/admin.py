import json

from django.contrib import admin, messages
from django.utils import timezone
from django.urls import reverse
from django.utils.html import format_html

from common.admin_readonly import ReadOnlyInline, ReadOnlyModelAdmin
from webhooks import delivery
from webhooks.models import Endpoint, WebhookAttempt, WebhookDelivery


class AttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = ["number", "started_at", "duration_ms", "url", "response_code", "error", "outcome", "response_body"]
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyModelAdmin):
    """What was sent to each user's receiver and what it answered: a record, read only (rows come
    from the outbox, and are the record of what was sent). Redelivering is the one action, for
    whoever may change deliveries."""

    list_display = ["id", "event", "status", "user", "meeting_ref", "attempts", "last_response_code",
                    "next_attempt_at", "created_at", "delivered_at"]
    list_filter = ["status", "event", "last_response_code", "created_at"]
    search_fields = ["=webhook_id", "user__email", "meeting__native_meeting_id", "=meeting__id"]
    date_hierarchy = "created_at"
    list_select_related = ["user", "meeting"]
    fields = ["webhook_id", "event", "status", "user", "meeting", "transition", "attempts", "next_attempt_at",
              "claimed_until", "held_by", "give_up_at", "url", "last_attempt_at", "last_response_code", "last_response_body",
              "last_error", "delivered_at", "created_at", "updated_at", "pretty_payload"]
    readonly_fields = fields
    inlines = [AttemptInline]
    actions = ["redeliver_selected"]

    @admin.display(description="meeting", ordering="meeting_id")
    def meeting_ref(self, obj: WebhookDelivery):
        return obj.meeting_id

    @admin.display(description="payload")
    def pretty_payload(self, obj: WebhookDelivery):
        try:
            text = json.dumps(json.loads(obj.payload), indent=2)
        except ValueError:
            text = obj.payload
        return format_html("<pre>{}</pre>", text)

    def has_redeliver_permission(self, request) -> bool:
        return request.user.has_perm("webhooks.change_webhookdelivery")

    @admin.action(description="Redeliver selected deliveries", permissions=["redeliver"])
    def redeliver_selected(self, request, queryset):
        done, skipped = delivery.redeliver(list(queryset.values_list("pk", flat=True)))
        text = f"Redelivering {done} deliver{'y' if done == 1 else 'ies'}."
        if skipped:
            text += f" {skipped} had an attempt running and were left alone."
        self.message_user(request, text, messages.SUCCESS if not skipped else messages.WARNING)


class EndpointStateFilter(admin.SimpleListFilter):
    """The endpoint's state in the words of its `state` column, not "disabled at: empty"."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("enabled", "enabled"), ("disabled", "disabled")]

    def queryset(self, request, queryset):
        if self.value() == "enabled":
            return queryset.filter(disabled_at__isnull=True)
        if self.value() == "disabled":
            return queryset.filter(disabled_at__isnull=False)
        return queryset


@admin.register(Endpoint)
class EndpointAdmin(ReadOnlyModelAdmin):
    """Each user's receiver URL as the workers see it (webhooks.endpoints, webhooks.health): its
    back-off, how long it has been failing, whether it is disabled; read only, kept by the workers
    (the user re-enables it with PUT /user/webhook)."""

    list_display = ["url", "user", "state", "consecutive_failures", "backing_off", "failing_since", "last_error",
                    "last_failure_at", "last_success_at", "deliveries"]
    list_filter = [EndpointStateFilter, "last_failure_at"]
    search_fields = ["url", "user__email"]
    list_select_related = ["user"]
    ordering = ["-consecutive_failures", "-last_failure_at"]
    readonly_fields = ["url", "user", "url_hash", "state", "disabled_at", "failing_since", "consecutive_failures",
                       "open_until", "last_error", "last_failure_at", "last_success_at", "updated_at", "deliveries"]

    @admin.display(boolean=True, description="backing off")
    def backing_off(self, obj: Endpoint) -> bool:
        return obj.open_until is not None and obj.open_until > timezone.now()

    @admin.display(description="state", ordering="disabled_at")
    def state(self, obj: Endpoint) -> str:
        return f"disabled since {obj.disabled_at:%Y-%m-%d %H:%M:%S}" if obj.disabled_at else "enabled"

    @admin.display(description="deliveries")
    def deliveries(self, obj: Endpoint):
        return user_deliveries_link(obj.user_id)


def user_deliveries_link(user_id: int):
    url = reverse("admin:webhooks_webhookdelivery_changelist")
    return format_html('<a href="{}?user__id__exact={}">deliveries of this user</a>', url, user_id)
