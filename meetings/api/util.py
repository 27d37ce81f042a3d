from __future__ import annotations

from rest_framework.exceptions import ValidationError

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
