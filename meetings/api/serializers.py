"""Request validation and response shapes of the user API and the bot callbacks."""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from .. import platforms
from ..callbacks import REPORTABLE
from ..models import Meeting, MeetingTransition
from ..payloads import meeting_response
from ..statuses import CompletionReason, FailureStage, Platform
from .util import validated_platform


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


class BotRequestSerializer(serializers.Serializer):
    platform = serializers.CharField()
    native_meeting_id = serializers.CharField(max_length=255)
    bot_name = serializers.CharField(required=False, allow_null=True, max_length=100)
    language = serializers.CharField(required=False, allow_null=True, max_length=16)
    task = serializers.ChoiceField(choices=["transcribe", "translate"], required=False, allow_null=True)
    passcode = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64)
    # A scheduled bot (absent or null: launched now, as in Vexa).
    join_at = serializers.CharField(required=False, allow_null=True, max_length=64)

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
    """The MeetingResponse (meetings.payloads, shared with the webhook events)."""

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
    connection_id = serializers.CharField(max_length=64)
    container_id = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=255)
    status = serializers.CharField(required=False, allow_null=True)
    # The range of the MeetingSession.exit_code column (a larger value was a database error, a 500).
    exit_code = serializers.IntegerField(required=False, allow_null=True, min_value=-(2**31), max_value=2**31 - 1)
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=2000)
    error_details = serializers.JSONField(required=False, allow_null=True)
    platform_specific_error = serializers.JSONField(required=False, allow_null=True)
    completion_reason = serializers.ChoiceField(choices=CompletionReason.values, required=False, allow_null=True)
    failure_stage = serializers.ChoiceField(choices=FailureStage.values, required=False, allow_null=True)
    timestamp = serializers.CharField(required=False, allow_null=True, max_length=64)

    def to_internal_value(self, data):
        # PostgreSQL cannot store NUL (\u0000) in text or jsonb (a 500). A bot's report is machine
        # input it cannot correct, so NULs are dropped rather than the whole callback refused.
        return super().to_internal_value(_without_nul(data))

    def validate(self, attrs: dict) -> dict:
        name = self.context["name"]
        if name == "exited" and attrs.get("exit_code") is None:
            raise serializers.ValidationError({"exit_code": ["The exited callback needs an exit_code."]})
        if name == "status_change":
            status = attrs.get("status")
            if status not in {s.value for s in REPORTABLE}:
                raise serializers.ValidationError(
                    {"status": [f"status must be one of {', '.join(sorted(s.value for s in REPORTABLE))}."]})
        return attrs


def _without_nul(value):
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
