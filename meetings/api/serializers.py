"""Request validation and response shapes of the user API and the bot callbacks."""
from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from .. import platforms
from ..models import Meeting, MeetingTransition
from ..payloads import meeting_response
from ..statuses import CompletionReason, FailureStage, Platform
from .util import validated_platform


def validate_platform(value: str) -> str:
    try:
        return validated_platform(value)
    except ValidationError as exc:  # the field's own error list, not a nested {"platform": ...}
        raise serializers.ValidationError(exc.detail["platform"]) from None


class BotRequestSerializer(serializers.Serializer):
    platform = serializers.CharField()
    native_meeting_id = serializers.CharField(max_length=255)
    bot_name = serializers.CharField(required=False, allow_null=True, max_length=100)
    language = serializers.CharField(required=False, allow_null=True, max_length=16)
    task = serializers.ChoiceField(choices=["transcribe", "translate"], required=False, allow_null=True)
    passcode = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64)

    def validate_platform(self, value: str) -> str:
        return validate_platform(value)

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
    language = serializers.CharField(required=False, allow_null=True, max_length=16)
    task = serializers.ChoiceField(choices=["transcribe", "translate"], required=False, allow_null=True)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("language") is None and attrs.get("task") is None:
            raise serializers.ValidationError("Give at least one of 'language' or 'task'.")
        return attrs


class MeetingDataPatchSerializer(serializers.Serializer):
    class DataSerializer(serializers.Serializer):
        name = serializers.CharField(required=False, allow_null=True, max_length=500)
        participants = serializers.ListField(child=serializers.CharField(max_length=255), required=False)
        languages = serializers.ListField(child=serializers.CharField(max_length=16), required=False)
        notes = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=10000)

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
    """The MeetingResponse (meetings.payloads, shared with the webhook events). The fields declared
    here document it for the schema; the values come from `meeting_response`."""

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


class TransitionSerializer(serializers.ModelSerializer):
    # `from` is a Python keyword, hence the explicit field names.
    to = serializers.CharField(source="to_status")

    class Meta:
        model = MeetingTransition
        fields = ["to", "source", "reason", "completion_reason", "failure_stage", "applied", "created_at"]

    def to_representation(self, instance):
        body = super().to_representation(instance)
        return {"from": instance.from_status or None, **body}


class MeetingDetailSerializer(MeetingSerializer):
    """The MeetingResponse with the meeting's transition history."""

    def to_representation(self, meeting: Meeting) -> dict:
        return {**meeting_response(meeting),
                "transitions": TransitionSerializer(meeting.transitions.all(), many=True).data}


class CallbackSerializer(serializers.Serializer):
    """A bot's report. Liberal in what it accepts (a refused report makes the Vexa bot give up): a
    status, completion reason or failure stage this manager does not define is mapped to the closest
    defined outcome (meetings/bot_vocabulary.py) and kept as sent in the transition and in `data`."""

    connection_id = serializers.CharField(max_length=64, help_text="The bot session's uid (its capability).")
    container_id = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=255,
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


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
