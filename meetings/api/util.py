from __future__ import annotations

from rest_framework.exceptions import ValidationError

from .. import platforms
from ..statuses import Platform


def validated(serializer_class, data, **context) -> dict:
    """Validate a request body; invalid input raises a 422 with per-field errors."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
    serializer = serializer_class(data=data, context=context)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def validated_platform(value: str) -> str:
    """A platform taken from the URL path."""
    if value not in Platform.values:
        raise ValidationError({"platform": [f"Unknown platform {value!r}; use one of {', '.join(Platform.values)}."]})
    return value


def validated_meeting_ref(platform: str, native_meeting_id: str) -> tuple[str, str]:
    """A platform and native meeting id taken from the URL path. An id no meeting can have (a NUL
    byte, the wrong format) answers 422 instead of reaching the database (psycopg refuses NUL: a 500)."""
    platform = validated_platform(platform)
    rule = platforms.RULES[Platform(platform)]
    if not rule.id_pattern.fullmatch(native_meeting_id):
        raise ValidationError({"native_meeting_id": [
            f"Invalid {platform} meeting id {native_meeting_id!r}: expected {rule.id_hint}."]})
    return platform, native_meeting_id
