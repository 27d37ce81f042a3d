"""Bounded JSON bodies: a size limit and a nesting-depth limit on every JSON request body.

A body past JSON_MAX_BODY_BYTES answers 413; one nested deeper than JSON_MAX_DEPTH answers 422
(deep nesting made the parser, our NUL filter and the JSON encoder recurse until RecursionError, a
500 with a 150 KB traceback in the log). The DRF parser (`LimitedJSONParser`, every API view)
and the callback fast path (meetings/api/callback_body.py, via `loads`) both use these.
"""
from __future__ import annotations

import json

from django.conf import settings
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "body_too_large"


class TooDeep(ValueError):
    pass


def too_large_message() -> str:
    return f"Request body too large: at most {settings.JSON_MAX_BODY_BYTES} bytes."


def too_deep_message() -> str:
    return f"JSON nested too deeply: at most {settings.JSON_MAX_DEPTH} levels of arrays and objects."


def depth_exceeds(value, limit: int) -> bool:
    """Is `value` (parsed JSON) nested deeper than `limit` arrays/objects? Iterative: the check
    itself must not recurse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _refuse_constant(value):
    # DRF's strict JSON: NaN / Infinity are not JSON.
    raise ValueError(f"{value} is not valid JSON")


def loads(raw: str):
    """Strict JSON within the depth limit. Raises TooDeep, or ValueError for anything malformed."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise TooDeep(too_deep_message()) from None
    if depth_exceeds(value, settings.JSON_MAX_DEPTH):
        raise TooDeep(too_deep_message())
    return value


class LimitedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.JSON_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise BodyTooLarge(too_large_message())
        try:
            return loads(raw.decode(encoding))
        except TooDeep as exc:
            raise ParseError(str(exc)) from None
        except ValueError as exc:  # malformed JSON, bad encoding (UnicodeDecodeError)
            raise ParseError(f"JSON parse error - {exc}") from None
