"""`@idempotent`: the `Idempotency-Key` header on a DRF view method (POST /bots, DELETE /bots/...,
PUT /bots/.../config). idempotency/services.py keeps the keys; this is their HTTP side, and what
the OpenAPI schema says of them.

Without the header a request is served as always. With it: a first request is served and its
answer kept; the same key with the same endpoint and body gets that answer again (status and body,
and `Idempotent-Replayed: true`) without the work being done again; while the first still runs, 409
with Retry-After; another endpoint or body under the key, 422.
"""
from __future__ import annotations

import functools
import json
import re

from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from common.domain_errors import DomainError
from common.openapi import VALIDATION_ERROR, error
from idempotency import services

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII, what every HTTP stack carries unchanged in a header; no space at either end, which
# HTTP servers strip from a header's value (a key of spaces would arrive empty).
KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$"
_KEY = re.compile(KEY_PATTERN)


class InvalidKey(DomainError):
    http_status = 400


PARAMETER = OpenApiParameter(
    HEADER, {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN},
    OpenApiParameter.HEADER, required=False,
    description="Makes a retry safe: the same key with the same request within IDEMPOTENCY_KEY_TTL_SECONDS "
                "(default a day) answers the first answer again (with `Idempotent-Replayed: true`) without "
                "doing the work again; 409 with Retry-After while the first request is still running; 422 when "
                "the key was used for another request. Per user; 1 to 255 printable ASCII characters, no space "
                "at either end.")
# The answers a replay can be (the kept ones, idempotency.services.keeps) carry this header.
REPLAYED = OpenApiParameter(
    REPLAYED_HEADER, {"type": "string", "enum": ["true"]}, OpenApiParameter.HEADER,
    response=[200, 201, 202, 400, 403, 404, 409],
    description="`true` on an answer given again for an Idempotency-Key (the first answer, kept); absent "
                "on an answer to a request served now.")
RETRY_AFTER = OpenApiParameter(
    "Retry-After", {"type": "integer", "minimum": 1}, OpenApiParameter.HEADER, response=[409],
    description="On the 409 of a key whose first request is still running: seconds until asking again.")
INVALID_KEY = "The Idempotency-Key header must be 1 to 255 printable ASCII characters, no space at either end."
STILL_RUNNING = "A request with this Idempotency-Key is still being processed: retry after `Retry-After` seconds."


def schema_parameters(*parameters) -> list:
    """An idempotent operation's parameters: its own, the key, and the headers of the key's answers."""
    return [*parameters, PARAMETER, REPLAYED, RETRY_AFTER]


def schema_responses(responses: dict) -> dict:
    """An idempotent operation's declared responses with the key's own: 400, 409, 422."""
    responses = dict(responses)
    responses[400] = error(INVALID_KEY)
    if 409 in responses:
        responses[409] = error(f"{responses[409].description} Or: {STILL_RUNNING}")
    else:
        responses[409] = error(STILL_RUNNING)
    responses.setdefault(422, VALIDATION_ERROR)
    return responses


def idempotent(handler):
    """Decorates a DRF view method (see the module docstring)."""

    @functools.wraps(handler)
    def wrapper(view, request, *args, **kwargs):
        if HEADER not in request.headers:
            return handler(view, request, *args, **kwargs)
        key = request.headers[HEADER]
        if not _KEY.fullmatch(key):
            raise InvalidKey(INVALID_KEY)
        body_hash = services.request_hash(_plain(request.data))  # a malformed body answers here, nothing kept
        try:
            held = services.claim(request.user.pk, key, f"{request.method} {request.path}", body_hash)
        except services.KeyReused as exc:
            # The shape of every 422 (common/errors.py): the refused field is the header.
            raise ValidationError({HEADER: [exc.detail]}) from None
        if isinstance(held, services.Replay):
            return Response(json.loads(held.body) if held.body else None, status=held.status,
                            headers={REPLAYED_HEADER: "true"})
        response = None
        try:
            response = _answer(handler, view, request, *args, **kwargs)
        finally:
            if response is not None and services.keeps(response.status_code):
                services.finish(held, response.status_code, _json_text(response))
            else:
                services.release(held)
        return response

    return wrapper


def _answer(handler, view, request, *args, **kwargs):
    """The handler's answer, its errors turned into their responses as DRF would (to be kept too);
    an error DRF does not handle (a 500) propagates."""
    try:
        return handler(view, request, *args, **kwargs)
    except Exception as exc:
        return view.handle_exception(exc)


def _json_text(response) -> str:
    data = getattr(response, "data", None)
    return "" if data is None else json.dumps(data, cls=JSONEncoder, ensure_ascii=True)


def _plain(data):
    # An empty form-typed body parses to a QueryDict; the hash wants plain JSON values.
    return {k: v for k, v in data.lists()} if hasattr(data, "lists") else data
