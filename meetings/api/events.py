"""`/events`: the user's event log, a page at a time, and as a live Server-Sent Events stream."""
from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import hash_token
from common.openapi import ErrorSerializer, error
from meetings.events import log as events
from meetings.events.stream import EventStream


def _position(request, value: str | None) -> int:
    """The position to read after; CursorExpired for a cursor older than what is still served."""
    try:
        after = events.position(request.user.pk, value)
    except events.InvalidCursor as exc:
        raise ValidationError({"after": [str(exc)]}) from exc
    return events.served_after(request.user.pk, after, given=bool(value))


def _expired(request, exc: events.CursorExpired) -> Response:
    return Response({"detail": "This cursor is older than the events still kept (RETENTION_TRANSITIONS_DAYS): "
                               "the events after it were deleted. Resume from `oldest_cursor`; earlier "
                               "events cannot be replayed.",
                     "oldest_cursor": events.cursor(request.user.pk, exc.oldest)}, status=410)


def _limit(value: str | None) -> int:
    if value is None:
        return settings.EVENTS_PAGE_DEFAULT
    # ASCII digits only: str.isdigit() is also true of '²' or '١', which int() refuses (a 500).
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= settings.EVENTS_PAGE_MAX:
        raise ValidationError({"limit": [f"limit must be a whole number from 1 to {settings.EVENTS_PAGE_MAX}."]})
    return int(value)


class EventSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The event id, the same as the webhook delivery's X-Webhook-Id.")
    cursor = serializers.CharField(help_text="Resume after this event: GET /events?after=<cursor>.")
    event = serializers.CharField(help_text="meeting.status_change")
    payload = serializers.DictField(help_text="The event body, exactly as the webhook sends it.")


class CursorGoneSerializer(ErrorSerializer):
    oldest_cursor = serializers.CharField(help_text="The oldest cursor still served: resume after it.")


GONE = OpenApiResponse(CursorGoneSerializer, description="The cursor is older than the events still kept "
                       "(retention deleted the events after it): resume from `oldest_cursor`.")


class EventPageSerializer(serializers.Serializer):
    events = EventSerializer(many=True, help_text="Oldest first.")
    next_cursor = serializers.CharField(help_text="Where the next page starts (also when this one is empty).")


_AFTER = OpenApiParameter("after", OpenApiTypes.STR, required=False,
                          description="An opaque cursor from an earlier page or event (absent: from the start).")


class EventsView(APIView):
    @extend_schema(operation_id="list_events", tags=["events"], summary="The user's meeting events after a cursor",
                   parameters=[_AFTER, OpenApiParameter("limit", OpenApiTypes.INT, required=False,
                                                        description="Events per page (default EVENTS_PAGE_DEFAULT, "
                                                                    "at most EVENTS_PAGE_MAX); a page also stops "
                                                                    "before its event bodies pass "
                                                                    "EVENTS_PAGE_MAX_BYTES (one event at least).")],
                   responses={200: EventPageSerializer, 410: GONE})
    def get(self, request):
        try:
            after = _position(request, request.query_params.get("after"))
        except events.CursorExpired as exc:
            return _expired(request, exc)
        page = events.within_bytes(events.page(request.user.pk, after, _limit(request.query_params.get("limit"))),
                                   settings.EVENTS_PAGE_MAX_BYTES)
        # Where to go on from: the last event listed, else where this page started.
        next_position = page[-1].position if page else after
        return Response({"events": [event.item(request.user.pk) for event in page],
                         "next_cursor": events.cursor(request.user.pk, next_position)})


class EventStreamView(APIView):
    def perform_content_negotiation(self, request, force=False):
        # An EventSource asks for text/event-stream: the stream is that, and an error before it
        # starts is JSON whatever was asked for.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(operation_id="stream_events", tags=["events"], summary="The user's events, live (Server-Sent Events)",
                   parameters=[_AFTER, OpenApiParameter("Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                                        required=False, description="A reconnecting EventSource's "
                                                        "last event id; wins over `after`.")],
                   responses={200: OpenApiResponse(OpenApiTypes.STR, description="text/event-stream: `id:` the "
                                                   "cursor, `event:` the event type, `data:` the event body; "
                                                   "comment lines as heartbeats."),
                              429: error("The user holds EVENT_STREAMS_PER_USER streams, or one stream while "
                                         "only the EVENT_STREAMS_RESERVED places are left, or the user's request "
                                         "rate limit is reached (Retry-After)."),
                              410: GONE,
                              503: error("No stream place on this worker or in all (EVENT_STREAMS_TOTAL), or "
                                         "Redis unavailable.")})
    def get(self, request):
        # A reconnecting EventSource sends the last id it saw; it wins over the URL's `after`.
        try:
            after = _position(request, request.headers.get("Last-Event-ID") or request.query_params.get("after"))
        except events.CursorExpired as exc:
            return _expired(request, exc)
        # Authenticated by X-API-Key (accounts.authentication): the stream re-checks that key.
        key_hash = hash_token(request.headers["X-API-Key"])
        response = StreamingHttpResponse(EventStream(request.user.pk, after, key_hash), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
        return response
