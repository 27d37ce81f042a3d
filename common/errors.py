"""Every error the API returns is JSON with a `detail` a person can act on.

Validation errors answer 422 (not DRF's 400) with a per-field `errors` object, as the wire
contract says; Django-level 404/500 pages are replaced by JSON too.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from common.domain_errors import DomainError
from common.jsonbody import too_large_message

log = logging.getLogger(__name__)


def _first_message(errors) -> str:
    if isinstance(errors, dict):
        for field, value in errors.items():
            inner = _first_message(value)
            return inner if field == "non_field_errors" else f"{field}: {inner}"
    if isinstance(errors, (list, tuple)) and errors:
        return _first_message(errors[0])
    return str(errors)


def json_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return Response({"detail": exc.detail}, status=exc.http_status, headers=headers)
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return Response(
            {"detail": f"Invalid request: {_first_message(errors)}", "errors": errors},
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"detail": f"Malformed JSON body: {exc.detail}", "errors": {}},
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"detail": str(response.data["detail"]), **{
            k: v for k, v in response.data.items() if k != "detail"}}
    return response


def not_found(request, exception=None):
    return JsonResponse({"detail": f"Not found: {request.path}"}, status=404)


def server_error(request):
    return JsonResponse({"detail": "Internal server error; the error has been logged."}, status=500)


def bad_request(request, exception=None):
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"detail": too_large_message()}, status=413)
    if isinstance(exception, DisallowedHost):
        return JsonResponse({"detail": "Unknown Host header: this server answers only the names in its "
                                       "ALLOWED_HOSTS setting."}, status=400)
    return JsonResponse({"detail": "Bad request."}, status=400)


def csrf_failure(request, reason=""):
    return JsonResponse({"detail": f"CSRF check failed ({reason}). The API takes no cookies: send the "
                                   "X-API-Key header; the Django admin needs its login form."}, status=403)


def login_locked_out(request, credentials, *args, **kwargs):
    """django-axes: too many failed Django admin logins."""

    minutes = round(settings.AXES_COOLOFF_TIME * 60)
    return JsonResponse({"detail": f"Too many failed login attempts; try again in {minutes} minutes "
                                   "(an operator can lift it: manage.py axes_reset)."}, status=429)


def permission_denied(request, exception=None):
    return JsonResponse({"detail": "Permission denied."}, status=403)
