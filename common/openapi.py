"""The OpenAPI 3 schema (drf-spectacular), served at `/openapi.json` with Swagger UI at `/docs`.

What drf-spectacular cannot see by itself is described here, once:

- the errors every operation really answers, added from what the view does (`AutoSchema`): the
  API key or admin token it checks (403), the JSON body it parses (413, 415, 422), the path or
  query parameters it validates (404, 422). Each is `{"detail": "..."}` (common/errors.py); a
  422 also carries the per-field `errors` object. Other answers (409, 503, ...) are declared on
  the view with `@extend_schema`;
- the three credentials: the user's `X-API-Key` (an authenticator, described by
  `APIKeyScheme`), the admin API's `X-Admin-API-Key` (a permission, not an authenticator) and
  the bot's optional `Authorization: Bearer <meeting token>` on callbacks;
- the plain Django views (`/healthz`, `/readyz`, `/metrics`, the bot-callback fast path): they
  stay plain (no DRF on those paths) and are shown in the schema as the DRF view that documents
  them (`document_as`; observability/schema.py); the one callback route as one path per callback
  (meetings/api/schema.py);
- what the request validators take beyond field types (`openapi_extra` on a serializer, the
  not-blank / no-NUL patterns of CharFields), so that input the schema calls valid is accepted:
  tests/api/test_fuzz.py holds the server to it.
"""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as _SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.views import APIView

from common.ratelimit import UserRateThrottle

USER_KEY = "userApiKey"
ADMIN_KEY = "adminApiKey"
MEETING_TOKEN = "meetingToken"
METRICS_TOKEN = "metricsToken"

# The schemes no authenticator class declares (added by `postprocess`).
SECURITY_SCHEMES = {
    ADMIN_KEY: {"type": "apiKey", "in": "header", "name": "X-Admin-API-Key",
                "description": "The ADMIN_API_TOKEN setting; wrong or missing: 403."},
    MEETING_TOKEN: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "The bot's meeting token (BOT_CONFIG.token). Optional: a bot that "
                                   "restarted with a new connection_id sends it once to register the new "
                                   "session. A bad token answers the same 404 as an unknown session."},
    METRICS_TOKEN: {"type": "http", "scheme": "bearer",
                    "description": "The METRICS_TOKEN setting, needed only when it is set."},
}


# Patterns of the strings DRF's CharField accepts (Python / ECMA-262 regex syntax alike). The empty
# string, where a field allows it, is drf-spectacular's own `oneOf` alternative. The whitespace DRF
# trims is Python's (str.strip), spelled out: `\s` means less in ECMA-262 (not \x1c-\x1f).
_PYTHON_WHITESPACE = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x10000)) if c.isspace())
NO_NUL = r"^[^\x00]+$"
NOT_BLANK = rf"^[^\x00]*[^\x00{_PYTHON_WHITESPACE}][^\x00]*$"
# A request serializer's attribute: JSON Schema keywords added to its component, for rules across
# fields its validate() enforces (one of two fields required, no unknown fields, ...).
OPENAPI_EXTRA = "openapi_extra"


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What went wrong, for a person to act on.")


class ValidationErrorSerializer(ErrorSerializer):
    errors = serializers.DictField(help_text="The refused fields with their messages (empty for a malformed body).")


class MessageSerializer(serializers.Serializer):
    message = serializers.CharField()


def error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


RATE_LIMITED = OpenApiResponse(
    ErrorSerializer, description="The user's request rate limit (API_RATE_LIMIT_*; for POST /bots also "
    "BOT_REQUEST_RATE_LIMIT_*) is reached: retry after the `Retry-After` header's seconds.")
RETRY_AFTER = {"schema": {"type": "integer", "minimum": 1},
               "description": "Whole seconds (at least 1) until the request would be served."}
VALIDATION_ERROR = OpenApiResponse(ValidationErrorSerializer, description="Invalid input (422: the wire "
                                   "contract's status for validation errors, not 400).")


class AutoSchema(_SpectacularAutoSchema):
    """Adds the error responses each operation really gives (see the module docstring). Views
    declare their successful answers and their own errors as a dict of status codes."""

    def _get_response_bodies(self, direction="response"):
        # (@extend_schema replaces get_response_serializers in a subclass; this method it leaves.)
        if not isinstance(self.get_response_serializers(), dict):
            raise TypeError(f"{self.view.__class__.__name__}.{self.method.lower()}: declare the responses "
                            "as a dict of status codes with @extend_schema(responses={...})")
        responses = super()._get_response_bodies(direction)
        for code, response in self._implied_errors().items():
            responses.setdefault(str(code), self._get_response_for_code(response, str(code), direction=direction))
        return dict(sorted(responses.items()))

    def _implied_errors(self) -> dict:
        implied = {}
        if self._checks_user_key():
            implied[403] = error("Missing, unknown or revoked API key (X-API-Key).")
        if self._checks_admin_key():
            implied[403] = error("Wrong or missing admin token (X-Admin-API-Key).")
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            implied[413] = error("The body is larger than JSON_MAX_BODY_BYTES.")
            implied[415] = error("The body is not application/json.")
            implied[422] = VALIDATION_ERROR
        if "{" in self.path:
            implied[404] = error("No such resource (of this user), or a path that does not parse.")
        if any(p.get("in") == "query" for p in self._get_parameters()):
            implied[422] = VALIDATION_ERROR
        if self._is_rate_limited():
            implied[429] = RATE_LIMITED
        return implied

    def _get_response_headers_for_code(self, status_code, direction="response"):
        headers = super()._get_response_headers_for_code(status_code, direction)
        if str(status_code) == "429" and self._is_rate_limited():
            headers["Retry-After"] = RETRY_AFTER
        return headers

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if "format" in schema and schema["format"] == "date-time":
            # Its format says what it takes; lengths beside it only make generated examples fail.
            schema.pop("minLength", None)
            schema.pop("maxLength", None)
            return schema
        if direction == "request" and isinstance(field, serializers.CharField) and "pattern" not in schema:
            # DRF refuses NUL characters in every CharField and, unless allow_blank, a value that is
            # blank once trimmed: the schema says so, or valid-looking input would be refused.
            schema["pattern"] = NO_NUL if field.allow_blank or not field.trim_whitespace else NOT_BLANK
        return schema

    def _map_basic_serializer(self, serializer, direction):
        # A serializer's own rules across fields (see OPENAPI_EXTRA), for the requests it validates.
        schema = super()._map_basic_serializer(serializer, direction)
        if direction == "request":
            for keyword, value in getattr(serializer, OPENAPI_EXTRA, {}).items():
                if keyword == "properties":
                    for name, rules in value.items():
                        field = schema["properties"][name]
                        if "oneOf" in field:  # a blank-allowed string: [the rules, the empty string]
                            field = field["oneOf"][0]
                        field.update(rules)
                        for dropped in [k for k, v in rules.items() if v is None]:  # None: drop the keyword
                            del field[dropped]
                else:
                    schema[keyword] = value
        return schema

    def _get_request_body(self, direction="request"):
        body = super()._get_request_body(direction)
        # No required field, but a rule across fields (one of two): an empty body is refused too.
        extra = getattr(self.get_request_serializer(), OPENAPI_EXTRA, {}) if body is not None else {}
        if "anyOf" in extra or "oneOf" in extra:
            body["required"] = True
        return body

    def get_auth(self):
        if self._checks_admin_key():
            return [{ADMIN_KEY: []}]
        return super().get_auth()

    def _checks_user_key(self) -> bool:
        # The user-key authenticator's extension (accounts.authentication.APIKeyScheme) names it.
        return any(USER_KEY in requirement for requirement in super().get_auth())

    def _checks_admin_key(self) -> bool:
        # A permission class names the scheme it checks in `openapi_security_scheme` (the admin
        # token is a permission, not an authenticator: drf-spectacular cannot see it by itself).
        return any(getattr(p, "openapi_security_scheme", None) == ADMIN_KEY for p in self.view.get_permissions())

    def _is_rate_limited(self) -> bool:
        return any(isinstance(t, UserRateThrottle) for t in self.view.get_throttles())


def document_as(view_class: type[APIView], plain_view):
    """Show the plain Django view `plain_view` in the schema as the DRF `view_class`, whose
    methods and @extend_schema describe it. drf-spectacular lists only DRF views (it looks for
    `cls`); the view itself is served unchanged."""
    plain_view.cls = view_class
    plain_view.initkwargs = {}
    return plain_view


def postprocess(result, generator, request, public):
    """drf-spectacular's last postprocessing hook: the security schemes, the paths in order."""
    result.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    result["paths"] = dict(sorted(result["paths"].items()))
    return result
