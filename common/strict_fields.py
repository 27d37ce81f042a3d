"""Request-body fields that take a JSON value of their own type only.

DRF's fields coerce: 5 becomes "5" in a CharField, "5" and 5.0 become 5 in an IntegerField, "yes"
becomes True in a BooleanField. A client sending the wrong type was then silently "understood",
and the OpenAPI schema's types were not what the server took. The user and admin APIs refuse a
wrong type with a 422 (as the Vexa API's models do). The bot callbacks keep DRF's lenient fields:
be liberal with bots.
"""
from __future__ import annotations

import re

from rest_framework import serializers

# The largest row skip a list query may ask for: PostgreSQL's OFFSET is a bigint (a larger one
# fails in the database: a 500).
MAX_OFFSET = 2**63 - 1


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class QueryIntegerField(serializers.IntegerField):
    """An integer query parameter: ASCII digits with an optional minus sign. DRF's IntegerField reads
    any Unicode digits int() takes ('١٢' is 12) and spaces: a URL means the digits it shows."""

    def to_internal_value(self, data):
        if not isinstance(data, str) or not _ASCII_INTEGER.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


_ASCII_INTEGER = re.compile(r"-?[0-9]+")


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if type(data) is not bool:
            self.fail("invalid")
        return data
