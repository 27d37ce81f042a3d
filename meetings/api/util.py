from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError

from meetings.lifecycle.statuses import Platform
from meetings.models import NATIVE_MEETING_ID_LENGTH as MAX_NATIVE_ID_LENGTH


# The path of /bots/{platform}/{native_meeting_id} and /meetings/{platform}/{native_meeting_id}, as
# `validated_meeting_ref` takes it (other values: 422; a well-formed id of no meeting: 404).
MEETING_REF_PARAMETERS = [
    OpenApiParameter("platform", {"type": "string", "enum": Platform.values}, OpenApiParameter.PATH),
    OpenApiParameter("native_meeting_id", {"type": "string", "minLength": 1, "maxLength": MAX_NATIVE_ID_LENGTH,
                                           "pattern": r"^[^/\x00]*$"}, OpenApiParameter.PATH),
]


def validated(serializer_class, data, **context) -> dict:
    """Validate a request body; invalid input raises a 422 with per-field errors."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
    serializer = serializer_class(data=data, context=context)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def validated_platform(value: str) -> str:
    """A platform taken from the URL path or a body (422 with the known platforms otherwise)."""
    if value not in Platform.values:
        raise ValidationError({"platform": [f"Unknown platform {value!r}; use one of {', '.join(Platform.values)}."]})
    return value


def validated_meeting_ref(platform: str, native_meeting_id: str) -> tuple[str, str]:
    """A platform and native meeting id taken from the URL path. An id the database cannot even be
    asked about (a NUL byte: psycopg raises, a 500) or that no meeting can have (longer than the
    column) answers 422; any other id simply matches no meeting (404), as in Vexa."""
    platform = validated_platform(platform)
    if "\x00" in native_meeting_id or len(native_meeting_id) > MAX_NATIVE_ID_LENGTH:
        raise ValidationError({"native_meeting_id": [
            f"Invalid meeting id: at most {MAX_NATIVE_ID_LENGTH} characters, no NUL characters."]})
    return platform, native_meeting_id
