"""The user's webhook: `GET`/`PUT /user/webhook` (the endpoint, its health, its secret),
`GET /user/webhook/deliveries` (what was sent and what the receiver answered) and
`POST /user/webhook/redeliver` (send events again). Thin: the work is in webhooks.health,
webhooks.history and webhooks.replay."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import webhook
from accounts.serializers import UserSerializer
from common.openapi import error
from common.strict_fields import QueryIntegerField, StrictBooleanField, StrictCharField, StrictIntegerField
from meetings.api.serializers import CappedListField
from webhooks import health, history, replay

DB_ID_MAX = 2**63 - 1  # a bigint: a larger id would fail in the database


def _validated(serializer_class, data) -> dict:
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- /user/webhook ---------------------------------------------------------------------------------
class WebhookSerializer(serializers.Serializer):
    # What accounts.webhook.validate_webhook_url takes, as far as a pattern can say (a subset): an
    # absolute http(s) URL without credentials, of a DNS name whose first label starts with a letter
    # (a number may name a private address).
    openapi_extra = {"properties": {"webhook_url": {"type": "string", "maxLength": 2048, "pattern": (
        r"^https?://[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,2}"
        r"(:[0-9]{1,4})?(/[^\s\x00]*)?$")}}}
    webhook_url = StrictCharField(max_length=2048)
    rotate_secret = StrictBooleanField(required=False, default=False)


class WebhookResponseSerializer(UserSerializer):
    webhook_url = serializers.CharField()
    webhook_secret = serializers.CharField(help_text="Signs the deliveries (X-Webhook-Signature); shown only here.")

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "webhook_url", "webhook_secret"]


class WebhookStatusSerializer(serializers.Serializer):
    webhook_url = serializers.CharField(allow_null=True, help_text="null: no webhook is set.")
    state = serializers.ChoiceField(choices=[health.ENABLED, health.DISABLED], help_text=(
        "disabled: every attempt failed for WEBHOOK_ENDPOINT_DISABLE_AFTER_SECONDS; deliveries are held, not "
        "sent, until PUT /user/webhook re-enables it."))
    disabled_at = serializers.DateTimeField(allow_null=True)
    failing_since = serializers.DateTimeField(allow_null=True, help_text="The first failure since the last success.")
    last_success_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_null=True, help_text="The last failed attempt's HTTP status or error.")
    last_error_at = serializers.DateTimeField(allow_null=True)
    held_deliveries = serializers.IntegerField(help_text="Deliveries held while the endpoint is disabled.")


class WebhookView(APIView):
    @extend_schema(operation_id="get_webhook", tags=["user"], summary="The user's webhook endpoint and its health",
                   responses={200: WebhookStatusSerializer})
    def get(self, request):
        return Response(WebhookStatusSerializer(health.status(request.user)).data)

    @extend_schema(operation_id="set_webhook", tags=["user"], request=WebhookSerializer,
                   summary="Set the user's webhook URL (and get its signing secret); re-enables a disabled "
                           "endpoint and sends its held deliveries",
                   responses={200: WebhookResponseSerializer})
    def put(self, request):
        body = _validated(WebhookSerializer, request.data)
        try:
            url, secret = webhook.set_webhook(request.user, body["webhook_url"], rotate_secret=body["rotate_secret"])
        except webhook.InvalidWebhookURL as exc:
            raise ValidationError({"webhook_url": [str(exc)]}) from None
        # Setting it re-enabled a disabled endpoint (webhooks.health.reenable, an accounts listener).
        request.user.refresh_from_db()
        # The secret is returned here, where the user set it up, and nowhere else.
        return Response({**UserSerializer(request.user).data, "webhook_url": url, "webhook_secret": secret})


# --- /user/webhook/deliveries ----------------------------------------------------------------------
class DeliveriesQuerySerializer(serializers.Serializer):
    after = serializers.CharField(required=False, allow_blank=True, help_text=(
        "An opaque cursor: the `next_cursor` of the page before (absent: the newest)."))
    limit = QueryIntegerField(required=False, default=history.PAGE_DEFAULT, min_value=1, max_value=history.PAGE_MAX,
                              help_text=f"Deliveries per page (1 to {history.PAGE_MAX}, default "
                                        f"{history.PAGE_DEFAULT}).")
    status = serializers.ChoiceField(
        choices=history.STATES, required=False, help_text="Only deliveries in this state.",
        error_messages={"invalid_choice": f"status must be one of: {', '.join(history.STATES)}."})


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    at = serializers.DateTimeField()
    http_status = serializers.IntegerField(allow_null=True, help_text="null: no HTTP answer (see error).")
    error = serializers.CharField(allow_null=True, help_text="The kind of connection error (refused, reset, "
                                                             "timeout, TLS error, ...) when there was no answer.")
    duration_ms = serializers.IntegerField()
    response = serializers.CharField(allow_blank=True, help_text=(
        f"The first {history.ANSWER_CHARS} characters of the receiver's answer."))


class MeetingRefSerializer(serializers.Serializer):
    platform = serializers.CharField()
    native_meeting_id = serializers.CharField()


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The delivery id (POST /user/webhook/redeliver takes it).")
    event_id = serializers.CharField(help_text="X-Webhook-Id: the same on every attempt and redelivery.")
    event = serializers.CharField()
    meeting = MeetingRefSerializer(allow_null=True, help_text="null: the meeting was deleted.")
    state = serializers.ChoiceField(choices=history.STATES)
    created_at = serializers.DateTimeField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)
    attempts = AttemptSerializer(many=True, help_text="Oldest first.")


class DeliveryPageSerializer(serializers.Serializer):
    deliveries = DeliverySerializer(many=True, help_text="Newest first.")
    next_cursor = serializers.CharField(allow_null=True, help_text="The next (older) page: ?after=<next_cursor>; "
                                                                   "null after the last page.")


class DeliveriesView(APIView):
    @extend_schema(operation_id="list_webhook_deliveries", tags=["user"], parameters=[DeliveriesQuerySerializer],
                   summary="The user's webhook deliveries with their attempts, newest first",
                   responses={200: DeliveryPageSerializer})
    def get(self, request):
        query = _validated(DeliveriesQuerySerializer, request.query_params.dict())
        try:
            page = history.page(request.user.pk, after=query.get("after"), limit=query["limit"],
                                state=query.get("status"))
        except history.InvalidQuery as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        return Response(DeliveryPageSerializer({"deliveries": page.items, "next_cursor": page.next_cursor}).data)


# --- /user/webhook/redeliver -----------------------------------------------------------------------
class RedeliverSerializer(serializers.Serializer):
    # validate(): either ids, or a range (after, with until or not).
    openapi_extra = {"oneOf": [
        {"required": ["ids"], "not": {"anyOf": [{"required": ["after"]}, {"required": ["until"]}]}},
        {"required": ["after"], "not": {"required": ["ids"]}},
    ]}
    ids = CappedListField(
        child=StrictIntegerField(min_value=1, max_value=DB_ID_MAX), required=False, min_length=1,
        max_length=settings.WEBHOOK_REDELIVER_MAX, error_messages={"max_length": (
            "At most {max_length} deliveries per request (WEBHOOK_REDELIVER_MAX): ask for fewer.")},
        help_text="Delivery ids (GET /user/webhook/deliveries), at most WEBHOOK_REDELIVER_MAX.")
    after = StrictCharField(required=False, allow_blank=True, help_text=(
        "An event-log cursor (GET /events): the events after it (\"\": from the first)."))
    until = StrictCharField(required=False, help_text="An event-log cursor: up to this event, included "
                                                      "(absent: up to the latest).")

    def validate(self, attrs: dict) -> dict:
        if ("ids" in attrs) == ("after" in attrs) or ("ids" in attrs and "until" in attrs):
            raise serializers.ValidationError("Give either `ids`, or a range: `after` (and `until`, or not).")
        return attrs


class RedeliveredSerializer(serializers.Serializer):
    queued = serializers.IntegerField(help_text="How many deliveries were queued.")
    ids = serializers.ListField(child=serializers.IntegerField(), help_text="The queued delivery ids.")
    created = serializers.IntegerField(help_text="Of them, new deliveries: events that had none.")
    skipped = serializers.ListField(child=serializers.IntegerField(),
                                    help_text="Deliveries left alone: an attempt of theirs was running.")


class RedeliverView(APIView):
    @extend_schema(operation_id="redeliver_webhooks", tags=["user"], request=RedeliverSerializer,
                   summary="Deliver events again, with their original ids and bodies",
                   responses={202: RedeliveredSerializer,
                              404: error("An id is not one of the user's deliveries."),
                              409: error("No webhook is set, or the endpoint is disabled: PUT /user/webhook first.")})
    def post(self, request):
        body = _validated(RedeliverSerializer, request.data)
        try:
            if "ids" in body:
                queued = replay.by_ids(request.user, body["ids"])
            else:
                queued = replay.by_range(request.user, body["after"] or None, body.get("until"))
        except replay.InvalidRequest as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        return Response(RedeliveredSerializer(queued.answer()).data, status=202)

