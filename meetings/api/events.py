"""`/events`: the user's event log, a page at a time, and as a live Server-Sent Events stream."""
from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import events
from ..event_stream import EventStream


def _position(request, value: str | None) -> int:
    try:
        return events.position(request.user.pk, value)
    except events.InvalidCursor as exc:
        raise ValidationError({"after": [str(exc)]}) from exc


def _limit(value: str | None) -> int:
    if value is None:
        return settings.EVENTS_PAGE_DEFAULT
    if not value.isdigit() or not 1 <= int(value) <= settings.EVENTS_PAGE_MAX:
        raise ValidationError({"limit": [f"limit must be a whole number from 1 to {settings.EVENTS_PAGE_MAX}."]})
    return int(value)


class EventsView(APIView):
    def get(self, request):
        after = _position(request, request.query_params.get("after"))
        page = events.page(request.user.pk, after, _limit(request.query_params.get("limit")))
        # Where to go on from: the last event listed, else where this page started.
        next_position = page[-1].position if page else after
        return Response({"events": [event.item(request.user.pk) for event in page],
                         "next_cursor": events.cursor(request.user.pk, next_position)})


class EventStreamView(APIView):
    def perform_content_negotiation(self, request, force=False):
        # An EventSource asks for text/event-stream: the stream is that, and an error before it
        # starts is JSON whatever was asked for.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request):
        # A reconnecting EventSource sends the last id it saw; it wins over the URL's `after`.
        after = _position(request, request.headers.get("Last-Event-ID") or request.query_params.get("after"))
        response = StreamingHttpResponse(EventStream(request.user.pk, after), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
        return response
