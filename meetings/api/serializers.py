"""Request validation and response shapes of the user API and the bot callbacks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from common.strict_fields import MAX_OFFSET, QueryIntegerField, StrictCharField
from meetings import platforms
from meetings.api.util import validated_platform
from meetings.payloads import meeting_response
from meetings.lifecycle.statuses import CompletionReason, FailureStage, MeetingStatus, Platform
from meetings.models import CONTAINER_ID_LENGTH, NATIVE_MEETING_ID_LENGTH, Meeting, MeetingTransition
from meetings.running import SCHEDULED_NORMALIZED
from orchestrators.base import NormalizedStatus


@extend_schema_field({"type": "string", "format": "date-time", "nullable": True})
class JoinAtField(serializers.CharField):
    """Parsed by `scheduled_join_at` (a DateTimeField would take a naive time as the server's)."""


def scheduled_join_at(value: str, now: datetime) -> datetime:
    """`join_at` as the instant it names (in UTC): ISO 8601 with its offset (`Z` or `+00:00`; any
    explicit offset names one instant), after `now` and at most SCHEDULED_MAX_AHEAD_DAYS ahead.
    A naive time is refused: whose clock it means cannot be known."""
    example = (now + timedelta(hours=1)).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise serializers.ValidationError(
            f"join_at must be an ISO 8601 date and time in UTC, e.g. {example!r}.") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise serializers.ValidationError(
            f"join_at has no time zone: give it in UTC with a 'Z' (or '+00:00') suffix, e.g. {example!r}.")
    parsed = parsed.astimezone(dt_timezone.utc)
    if parsed <= now:
        raise serializers.ValidationError(
            f"join_at {parsed.isoformat()} is not in the future (it is now {now.isoformat()}); omit it to "
            "launch the bot now.")
    limit = settings.SCHEDULED_MAX_AHEAD_DAYS
    if parsed > now + timedelta(days=limit):
        raise serializers.ValidationError(f"join_at {parsed.isoformat()} is too far ahead: at most {limit:g} days.")
    return parsed


def validate_platform(value: str) -> str:
    try:
        return validated_platform(value)
    except ValidationError as exc:  # the field's own error list, not a nested {"platform": ...}
        raise serializers.ValidationError(exc.detail["platform"]) from None


def _platform_variant(platform: Platform) -> dict:
    """The rules validate() applies to one platform's requests (for the OpenAPI schema)."""
    rule = platforms.RULES[platform]
    # A blank passcode is no passcode.
    passcode = ({"type": "string", "pattern": f"^(?:{rule.passcode_pattern.pattern.strip('^$')})?$", "nullable": True}
                if rule.passcode_pattern else {"type": "string", "maxLength": 0, "nullable": True})
    return {"properties": {"platform": {"type": "string", "pattern": f"^{platform.value}$"},
                           "native_meeting_id": {"type": "string", "pattern": rule.id_pattern.pattern},
                           "passcode": passcode}}


class BotRequestSerializer(serializers.Serializer):
    # The meeting id and passcode formats depend on the platform (meetings/platforms.py).
    openapi_extra = {"oneOf": [_platform_variant(p) for p in Platform]}

    platform = StrictCharField()
    native_meeting_id = StrictCharField(max_length=NATIVE_MEETING_ID_LENGTH)
    bot_name = StrictCharField(required=False, allow_null=True, max_length=100)
    language = StrictCharField(required=False, allow_null=True, max_length=16)
    task = serializers.ChoiceField(choices=["transcribe", "translate"], required=False, allow_null=True)
    passcode = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=64)
    # A scheduled bot (absent or null: launched now, as in Vexa).
    join_at = JoinAtField(required=False, allow_null=True, max_length=64, help_text=(
        "Schedule the bot: an ISO 8601 date and time with its offset (e.g. 2026-12-01T15:00:00Z), in the "
        "future and at most SCHEDULED_MAX_AHEAD_DAYS (30) days ahead. Absent or null: the bot joins now."))

    def validate_platform(self, value: str) -> str:
        return validate_platform(value)

    def validate_join_at(self, value: str | None) -> datetime | None:
        return None if value is None else scheduled_join_at(value, timezone.now())

    def validate(self, attrs: dict) -> dict:
        rule = platforms.RULES[Platform(attrs["platform"])]
        native_id = attrs["native_meeting_id"].strip()
        if not rule.id_pattern.fullmatch(native_id):
            raise serializers.ValidationError(
                {"native_meeting_id": [f"Invalid {attrs['platform']} meeting id {native_id!r}: expected {rule.id_hint}."]})
        attrs["native_meeting_id"] = native_id
        passcode = attrs.get("passcode") or None
        if passcode is not None:
            if rule.passcode_pattern is None:
                raise serializers.ValidationError(
                    {"passcode": [f"{attrs['platform']} meetings do not take a passcode."]})
            if not rule.passcode_pattern.fullmatch(passcode):
                raise serializers.ValidationError({"passcode": ["Invalid passcode format."]})
        attrs["passcode"] = passcode
        return attrs


class BotConfigSerializer(serializers.Serializer):
    # validate(): at least one of them, not null.
    openapi_extra = {"anyOf": [{"required": [name], "properties": {name: {"type": "string"}}}
                               for name in ("language", "task")]}
    language = StrictCharField(required=False, allow_null=True, max_length=16)
    task = serializers.ChoiceField(choices=["transcribe", "translate"], required=False, allow_null=True)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("language") is None and attrs.get("task") is None:
            raise serializers.ValidationError("Give at least one of 'language' or 'task'.")
        return attrs


class CappedListField(serializers.ListField):
    """A ListField that refuses a list over `max_length` before validating its items (100,000 items
    were each validated first, only to be refused)."""

    def to_internal_value(self, data):
        if isinstance(data, list) and self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class MeetingDataPatchSerializer(serializers.Serializer):
    class DataSerializer(serializers.Serializer):
        openapi_extra = {"additionalProperties": False}
        name = StrictCharField(required=False, allow_null=True, max_length=500)
        # Items capped (MEETING_DATA_MAX_ITEMS), the fields' JSON too (MEETING_DATA_MAX_BYTES, once
        # merged: meetings.services.update_meeting_data): every transition and webhook copies them.
        participants = CappedListField(child=StrictCharField(max_length=255), required=False,
                                       max_length=settings.MEETING_DATA_MAX_ITEMS)
        languages = CappedListField(child=StrictCharField(max_length=16), required=False,
                                    max_length=settings.MEETING_DATA_MAX_ITEMS)
        notes = StrictCharField(required=False, allow_null=True, allow_blank=True, max_length=10000)

        def to_internal_value(self, data):
            # A nested serializer has no `initial_data`: the raw dict is only seen here.
            if isinstance(data, dict):
                unknown = set(data) - set(self.fields)
                if unknown:
                    raise serializers.ValidationError(
                        f"Unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(self.fields)}.")
            return super().to_internal_value(data)

    data = DataSerializer()


class MeetingSerializer(serializers.Serializer):
    """The MeetingResponse (meetings.payloads, shared with the webhook events). The fields describe
    it in the OpenAPI schema; the representation is meeting_response's own."""

    id = serializers.IntegerField()
    user_id = serializers.IntegerField()
    platform = serializers.ChoiceField(choices=Platform.choices)
    native_meeting_id = serializers.CharField()
    constructed_meeting_url = serializers.CharField()
    status = serializers.ChoiceField(choices=MeetingStatus.choices)
    bot_container_id = serializers.CharField(allow_null=True)
    start_time = serializers.DateTimeField(allow_null=True)
    end_time = serializers.DateTimeField(allow_null=True)
    data = serializers.DictField(help_text="bot_name, language, task; completion_reason, failure_stage and "
                                           "last_error once known; the fields set by PATCH /meetings/...")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    deadline_at = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="When the manager acts on this live meeting if neither its bot nor its user does first "
                  "(the sweep acts within one sweep interval after it); null once the meeting ended.")
    deadline_action = serializers.CharField(
        read_only=True, allow_null=True,
        help_text="What the manager then does: 'fail: no bot callback' (requested), 'fail: bot still joining', "
                  "'complete: awaiting_admission_timeout', 'stop: max_duration' (active), "
                  "'finalize: completed/<stop reason>' (stopping); null once the meeting ended.")

    def to_representation(self, meeting: Meeting) -> dict:
        return meeting_response(meeting)


class MeetingListSerializer(serializers.Serializer):
    meetings = MeetingSerializer(many=True, help_text="Newest first.")


class MeetingListQuerySerializer(serializers.Serializer):
    """The optional query parameters of GET /meetings (as Vexa 0.10)."""

    limit = QueryIntegerField(
        required=False, default=settings.MEETINGS_PAGE_DEFAULT, min_value=1, max_value=settings.MEETINGS_PAGE_MAX,
        help_text=f"At most this many meetings (1 to MEETINGS_PAGE_MAX, {settings.MEETINGS_PAGE_MAX}; default "
                  f"MEETINGS_PAGE_DEFAULT, {settings.MEETINGS_PAGE_DEFAULT}).")
    offset = QueryIntegerField(required=False, min_value=0, max_value=MAX_OFFSET,
                                      help_text="Skip this many of the newest meetings first.")
    status = serializers.ChoiceField(choices=MeetingStatus.choices, required=False,
                                     help_text="Only meetings in this status.")
    platform = serializers.ChoiceField(choices=Platform.choices, required=False,
                                       help_text="Only meetings on this platform.")


class TransitionSerializer(serializers.ModelSerializer):
    to = serializers.ChoiceField(source="to_status", choices=MeetingStatus.choices)

    class Meta:
        model = MeetingTransition
        fields = ["to", "source", "reason", "completion_reason", "failure_stage", "applied", "created_at"]

    def get_fields(self):
        # `from` is a Python keyword: declared here rather than as a class attribute.
        return {"from": serializers.ChoiceField(source="from_status", choices=MeetingStatus.choices, allow_null=True,
                                                help_text="null for the first transition (the creation)."),
                **super().get_fields()}

    def to_representation(self, instance):
        body = super().to_representation(instance)
        body["from"] = instance.from_status or None  # stored blank for the creation
        return body


class MeetingDetailSerializer(MeetingSerializer):
    """The MeetingResponse with the meeting's transition history."""

    transitions = TransitionSerializer(many=True, help_text="Oldest first, refused attempts included "
                                                            "(applied: false).")

    def to_representation(self, meeting: Meeting) -> dict:
        return {**meeting_response(meeting),
                "transitions": TransitionSerializer(meeting.transitions.all(), many=True).data}


class RunningBotSerializer(serializers.Serializer):
    container_id = serializers.CharField(allow_null=True, help_text="Null for a scheduled bot (no container yet).")
    container_name = serializers.CharField(allow_null=True, help_text="Null for a scheduled bot.")
    platform = serializers.ChoiceField(choices=Platform.choices, allow_null=True)
    native_meeting_id = serializers.CharField(allow_null=True)
    status = serializers.CharField(help_text="The backend's own status word (`scheduled` for a scheduled bot).")
    normalized_status = serializers.ChoiceField(choices=[*(s.value for s in NormalizedStatus), SCHEDULED_NORMALIZED])
    created_at = serializers.DateTimeField(allow_null=True)
    labels = serializers.DictField(child=serializers.CharField())
    meeting_id_from_name = serializers.CharField(allow_null=True)


class RunningBotsSerializer(serializers.Serializer):
    running_bots = RunningBotSerializer(many=True)


class CallbackSerializer(serializers.Serializer):
    """A bot's report. Liberal in what it accepts (a refused report makes the Vexa bot give up): a
    status, completion reason or failure stage this manager does not define is mapped to the closest
    defined outcome (meetings/bot_protocol/vocabulary.py) and kept as sent in the transition and in `data`."""

    # validate()'s rules of each callback, for the OpenAPI schema (which has one path per callback).
    # status_change takes any status string (liberal: unknown ones are recorded, not refused).
    openapi_by_callback = {
        "exited": {"required": ["exit_code"], "properties": {"exit_code": {"type": "integer"}}},
        "status_change": {"required": ["status"], "properties": {"status": {"type": "string"}}},
    }

    connection_id = serializers.CharField(max_length=64, help_text="The bot session's uid (its capability).")
    container_id = serializers.CharField(required=False, allow_null=True, allow_blank=True,
                                         max_length=CONTAINER_ID_LENGTH,
                                         help_text="The bot's container name or id, as it knows it.")
    status = serializers.CharField(
        required=False, allow_null=True, max_length=64,
        help_text="status_change: joining, awaiting_admission, active, completed, failed; needs_human_help "
                  "(kept as a condition of the live meeting); anything else is recorded, and ends the meeting "
                  "by its exit_code when one is sent.")
    # The range of the MeetingSession.exit_code column (a larger value was a database error, a 500).
    exit_code = serializers.IntegerField(required=False, allow_null=True, min_value=-(2**31), max_value=2**31 - 1,
                                         help_text="The bot's exit code: 0 completes the meeting, any other fails it.")
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=2000,
                                   help_text="The bot's own words for the change.")
    error_details = serializers.JSONField(required=False, allow_null=True,
                                          help_text="Free-form JSON; stored capped, the failure's data.last_error.")
    platform_specific_error = serializers.JSONField(required=False, allow_null=True,
                                                    help_text="Free-form JSON; stored capped.")
    completion_reason = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=64,
        help_text=f"With a completion: {', '.join(CompletionReason.values)}; others (max_bot_time_exceeded...) "
                  "are mapped and kept as data.bot_completion_reason.")
    failure_stage = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=64,
        help_text=f"With a failure: {', '.join(FailureStage.values)}; others are kept as data.bot_failure_stage "
                  "and the meeting fails in the status it was in.")
    timestamp = serializers.CharField(required=False, allow_null=True, max_length=64,
                                      help_text="When the bot sent the report (kept as bot_timestamp).")
    speaker_events = serializers.JSONField(required=False, allow_null=True,
                                           help_text="Vexa bot: speaker events; kept capped with the transition.")
    bot_logs = serializers.JSONField(required=False, allow_null=True,
                                     help_text="Vexa bot: its last log lines; the tail is kept with the transition.")
    bot_resources = serializers.JSONField(required=False, allow_null=True,
                                          help_text="Vexa bot: its resource summary at exit; kept capped in data.")

    def to_internal_value(self, data):
        # PostgreSQL cannot store NUL (\u0000) in text or jsonb (a 500). A bot's report is machine
        # input it cannot correct, so NULs are dropped rather than the whole callback refused.
        return super().to_internal_value(_without_nul(data))

    def validate(self, attrs: dict) -> dict:
        name = self.context["name"]
        if name == "exited" and attrs.get("exit_code") is None:
            raise serializers.ValidationError({"exit_code": ["The exited callback needs an exit_code."]})
        if name == "status_change" and not attrs.get("status"):
            raise serializers.ValidationError({"status": ["The status_change callback needs a status."]})
        for field in ("completion_reason", "failure_stage"):
            if attrs.get(field) == "":
                attrs[field] = None  # a blank reason or stage is no reason or stage
        return attrs


class CallbackResponseSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["processed", "ok", "container_updated"],
                                     help_text="ok: nothing needed changing (a repeat, an ended meeting, a stale session).")
    meeting_id = serializers.IntegerField()
    meeting_status = serializers.ChoiceField(choices=MeetingStatus.choices)
    leave = serializers.BooleanField(required=False, help_text="Present (true) once a stop was requested: the bot "
                                                               "must leave.")


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
