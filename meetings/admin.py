from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, OuterRef, Subquery
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone

from common.admin_readonly import ReadOnlyInline, ReadOnlyModelAdmin
from meetings.lifecycle.statuses import NON_TERMINAL, FailureStage, MeetingStatus
from meetings.models import BotInstance, Meeting, MeetingSession, MeetingTransition
from meetings.stopping import instances, operations, reconcile
from meetings.stopping.reconcile import describe_sweep


class FinalizeForm(forms.Form):
    OUTCOMES = [("completed", "completed (stopped)")] + [
        (f"failed:{stage}", f"failed at stage {stage}") for stage in FailureStage.values]
    outcome = forms.ChoiceField(choices=OUTCOMES)


class TransitionInline(ReadOnlyInline):
    model = MeetingTransition
    fields = ["created_at", "from_status", "to_status", "source", "reason", "completion_reason",
              "failure_stage", "session", "applied", "metadata"]
    readonly_fields = fields


class SessionInline(admin.TabularInline):
    model = MeetingSession
    extra = 0
    can_delete = False
    fields = ["session_uid", "started_at", "ended_at", "exit_code"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Meeting)
class MeetingAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "platform", "native_meeting_id", "status", "completion_reason",
                    "failure_stage", "stop_requested_at", "deadline_at", "orchestrator", "created_at"]
    list_filter = ["status", "platform", "orchestrator"]
    search_fields = ["native_meeting_id", "user__email", "bot_container_id"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    inlines = [SessionInline, TransitionInline]
    actions = ["finalize_selected", "run_orphan_sweep"]
    readonly_fields = ["created_at", "updated_at"]  # not model-form fields: shown only when named
    # A meeting is shown, never edited here: its status, data and stop reason change only through
    # meetings.lifecycle.transitions (the actions, the API, the bot), which record and announce the
    # change. Meetings are created by POST /bots and removed by DELETE /meetings/...

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The actions change meetings (through the lifecycle): offered to whoever may change them;
        # a meeting's own page is view-only.
        return obj is None and super().has_change_permission(request)

    @admin.action(description="Finalize selected meetings", permissions=["change"])
    def finalize_selected(self, request, queryset):
        form = FinalizeForm(request.POST if request.POST.get("confirm") else None)
        if not form.is_valid():
            return TemplateResponse(request, "admin/meetings/finalize.html", {
                **self.admin_site.each_context(request), "form": form, "meetings": list(queryset),
                "title": "Finalize meetings"})
        to_status, _, stage = form.cleaned_data["outcome"].partition(":")
        results = operations.finalize_meetings(
            list(queryset.values_list("id", flat=True)), to_status=MeetingStatus(to_status),
            failure_stage=stage or None, actor=request.user.get_username())
        applied = sum(r.applied for r in results)
        self.message_user(request, f"Finalized {applied} meeting(s); {len(results) - applied} were already ended.",
                          messages.SUCCESS)
        return None

    def changelist_view(self, request, extra_context=None):
        # The sweep looks at every meeting and at bots no meeting knows: its action runs without a
        # selection, also when there is no meeting at all (Django's action handling would refuse
        # an empty selection, and a leftover bot of an emptied database would never be stopped).
        if request.method == "POST" and request.POST.get("action") == "run_orphan_sweep" \
                and not request.POST.getlist(ACTION_CHECKBOX_NAME) \
                and "run_orphan_sweep" in self.get_actions(request):  # offered: may change meetings
            self.run_orphan_sweep(request, self.get_queryset(request).none())
            return HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context)

    @admin.action(description="Run orphan sweep now", permissions=["change"])
    def run_orphan_sweep(self, request, queryset):
        _plan, summary = reconcile.sweep()
        level = messages.WARNING if summary.errors or summary.skipped else messages.SUCCESS
        self.message_user(request, f"Orphan sweep: {describe_sweep(summary)}", level)


@admin.register(MeetingTransition)
class MeetingTransitionAdmin(ReadOnlyModelAdmin):
    # The time first: a whole meeting happens within a minute, its rows told apart by their seconds,
    # and the meeting column is wide enough to push a last column out of sight.
    list_display = ["id", "created_at", "meeting", "from_status", "to_status", "source", "applied"]
    list_filter = ["source", "applied", "to_status"]
    search_fields = ["meeting__native_meeting_id", "reason"]


@admin.register(BotInstance)
class BotInstanceAdmin(ReadOnlyModelAdmin):
    """Where bots run, when each instance was last listed, and its live meetings. An instance gone
    for good (its host will never come back) has its meetings ended by the explicit action."""

    list_display = ["instance", "backend", "last_listed_at", "listed_by", "live_meetings", "unseen"]
    ordering = ["instance"]
    actions = ["end_meetings_of_lost_instances"]

    def get_queryset(self, request):
        live = (Meeting.objects.filter(bot_instance=OuterRef("instance"), status__in=sorted(NON_TERMINAL))
                .order_by().values("bot_instance").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(live=Subquery(live))

    @admin.display(description="live meetings")
    def live_meetings(self, obj) -> int:
        return obj.live or 0

    @admin.display(boolean=True, description="unseen")
    def unseen(self, obj) -> bool:
        return bool(obj.live) and obj.last_listed_at < timezone.now() - timedelta(seconds=settings.INSTANCE_UNSEEN_SECONDS)

    def has_change_permission(self, request, obj=None) -> bool:
        # The action ends meetings: offered to whoever may change meetings; the rows stay read-only.
        return obj is None and request.user.has_perm("meetings.change_meeting")

    @admin.action(description="End the live meetings of the selected lost instances", permissions=["change"])
    def end_meetings_of_lost_instances(self, request, queryset):
        ended = sum(instances.end_meetings_of(i, by=request.user.get_username())
                    for i in queryset.values_list("instance", flat=True))
        self.message_user(request, f"Ended {ended} live meeting(s) of {queryset.count()} lost instance(s).",
                          messages.WARNING)


@admin.register(MeetingSession)
class MeetingSessionAdmin(ReadOnlyModelAdmin):
    """Sessions are the bots' credentials and history, written by the launch and the callbacks."""

    list_display = ["id", "meeting", "session_uid", "started_at", "ended_at", "exit_code"]
    search_fields = ["session_uid", "meeting__native_meeting_id"]
