"""DRF authentication for users (`X-API-Key`) and the admin API (`X-Admin-API-Key`)."""
from __future__ import annotations

import hmac

from django.conf import settings
from rest_framework import authentication, exceptions, permissions

from accounts.services import user_for_token

MISSING_TOKEN = "Missing API token (X-API-Key header)"
INVALID_TOKEN = "Invalid API token"


class APIKeyAuthentication(authentication.BaseAuthentication):
    """No `authenticate_header`: DRF then answers 403, as the Vexa API does."""

    def authenticate(self, request):
        token = request.headers.get("X-API-Key")
        if not token:
            raise exceptions.AuthenticationFailed(MISSING_TOKEN)
        user = user_for_token(token)
        if user is None:
            raise exceptions.AuthenticationFailed(INVALID_TOKEN)
        return user, None


class HasAdminAPIKey(permissions.BasePermission):
    message = "Invalid or missing admin token (X-Admin-API-Key header)"
    # The security scheme the OpenAPI schema shows for it (common.openapi.ADMIN_KEY): a string, as
    # DRF imports this module while it loads, before drf-spectacular can be.
    openapi_security_scheme = "adminApiKey"

    def has_permission(self, request, view) -> bool:
        given = request.headers.get("X-Admin-API-Key", "")
        return bool(given) and hmac.compare_digest(given.encode(), settings.ADMIN_API_TOKEN.encode())

