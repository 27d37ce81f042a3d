"""The fast path of the bot callback view: a well-formed, valid JSON body read without DRF.

`report(name, request)` returns the CallbackReport for a body that `CallbackSerializer` would
accept and turn into exactly the same values, and None for anything else (another content type
or charset, malformed JSON, a value of another type, a blank, too long or NUL-containing string,
a status, reason or stage this manager does not define...). The view sends every None to the DRF
view, so an invalid callback gets the one set of 422 / 404 / 415 answers `CallbackSerializer` and
common/errors.py produce, and an unusual valid one (`needs_human_help`, a reason to map) the
serializer's values: this module never builds an error itself, it only recognizes the common valid
case cheaply.
"""
from __future__ import annotations

import re

from django.conf import settings
from rest_framework import serializers

from common import jsonbody
from meetings.api.serializers import CallbackSerializer, _without_nul
from meetings.bot_protocol.callbacks import CallbackReport
from meetings.bot_protocol.vocabulary import COMPLETION_REASONS, FAILURE_STAGES, REPORTABLE

# Characters the serializer would change or refuse in a string: NUL (dropped), lone surrogates
# (refused). Strings holding them take the DRF path.
_ODD = re.compile("[\x00\ud800-\udfff]")
_NOT_FAST = object()

# The rules are CallbackSerializer's own fields, read once: one source for both paths.
_FIELDS = CallbackSerializer().fields
# Strings looked up in our vocabulary; anything else (a reason to map, a blank) is the DRF path's.
_LOOKED_UP = {"completion_reason": COMPLETION_REASONS, "failure_stage": FAILURE_STAGES}
# field: (allow_blank, max_length) of its CharFields.
_STRINGS = {name: (field.allow_blank, field.max_length) for name, field in _FIELDS.items()
            if isinstance(field, serializers.CharField) and name not in _LOOKED_UP}
# Its JSONFields: taken as they came, NULs dropped.
_FREE_FORM = frozenset(name for name, field in _FIELDS.items() if isinstance(field, serializers.JSONField))
_EXIT_CODE_MIN, _EXIT_CODE_MAX = _FIELDS["exit_code"].min_value, _FIELDS["exit_code"].max_value


def report(name: str, request) -> CallbackReport | None:
    """The parsed report, or None when the DRF view must answer (anything but a plain valid body)."""
    if request.content_type != "application/json":
        return None
    charset = request.content_params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return None
    body = request.body  # Django refuses (413) a Content-Length over JSON_MAX_BODY_BYTES
    if len(body) > settings.JSON_MAX_BODY_BYTES:  # a chunked body has no Content-Length
        return None
    try:
        # Strict (no NaN) and within the depth limit: anything else is the DRF path's 413 / 422.
        data = jsonbody.loads(body.decode("utf-8"))
    except ValueError:  # malformed JSON, bad UTF-8 (UnicodeDecodeError), NaN, too deep
        return None
    if type(data) is not dict:
        return None
    fields = {}
    for key, value in data.items():
        if "\x00" in key:  # the serializer strips NULs from keys too: "connection_id\0" counts
            return None
        if key in _STRINGS:
            value = _string(value, *_STRINGS[key])
        elif key == "exit_code":
            if value is not None and (type(value) is not int or not _EXIT_CODE_MIN <= value <= _EXIT_CODE_MAX):
                return None
        elif key in _LOOKED_UP:
            # A list or object here was a TypeError (unhashable), a 500: only strings are looked up.
            if value is not None and (type(value) is not str or value not in _LOOKED_UP[key]):
                return None
        elif key in _FREE_FORM:
            value = _without_nul(value)
        else:
            continue  # unknown keys are ignored, as by the serializer
        if value is _NOT_FAST:
            return None
        fields[key] = value
    if fields.get("connection_id") is None:
        return None
    if name == "exited" and fields.get("exit_code") is None:
        return None
    if name == "status_change" and fields.get("status") not in REPORTABLE:
        return None
    return CallbackReport(name=name, **fields)


def _string(value, allow_blank: bool, max_length: int | None):
    if value is None:
        # allow_null on every optional field; connection_id (required, not nullable) is checked
        # by the caller.
        return None
    if type(value) is not str or _ODD.search(value):
        return _NOT_FAST
    value = value.strip()
    if not value:
        return "" if allow_blank else _NOT_FAST
    if max_length is not None and len(value) > max_length:
        return _NOT_FAST
    return value
