"""The user's API key as the OpenAPI schema shows it: drf-spectacular's extension for the
authenticator (registered by AccountsConfig.ready: DRF imports the authenticator while it loads,
before drf-spectacular can be imported)."""
from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from accounts.authentication import MISSING_TOKEN, APIKeyAuthentication
from common.openapi import USER_KEY


class APIKeyScheme(OpenApiAuthenticationExtension):
    target_class = APIKeyAuthentication
    name = USER_KEY

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-API-Key",
                "description": f"The user's API token. Missing or unknown: 403 ({MISSING_TOKEN!r} / "
                               "'Invalid API token'), as in the Vexa API."}
