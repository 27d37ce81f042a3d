"""`/bots/internal/callback/<name>`: the bot protocol. No API key: the connection id is the
capability, and a new session proves itself with the meeting token.

The hot path (bots report often: throughput counts here) is the plain Django view `callback_view`: a valid JSON body is
read by `callback_body.report` without DRF's request/serializer machinery. Anything else (another
method, content type, malformed JSON, an invalid field, an unknown callback name) is answered by
the DRF `CallbackView` with `CallbackSerializer`, so every error keeps its one shape and message.
"""
from __future__ import annotations

import json

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from common import openapi
from meetings.api import callback_body
from meetings.api.serializers import CallbackResponseSerializer, CallbackSerializer
from meetings.api.util import validated
from meetings.bot_protocol import callbacks
from meetings.lifecycle.errors import DomainError, NotFound


class CallbackView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []  # no user: a user's API burst never slows their bots' reports

    @extend_schema(operation_id="bot_callback", tags=["bot callbacks"], request=CallbackSerializer,
                   auth=[{openapi.MEETING_TOKEN: []}, {}],
                   summary="A bot reports its state",
                   description="The connection_id (the bot's session uid) is the capability. `exited` needs "
                               "exit_code; `status_change` needs status. Unknown fields are ignored.",
                   responses={200: CallbackResponseSerializer,
                              404: openapi.error("Unknown callback name, unknown session, or a meeting token "
                                                 "that does not prove the session (one and the same answer).")})
    def post(self, request, name: str):
        if name not in callbacks.CALLBACK_NAMES:
            raise NotFound(f"Unknown callback {name!r}; use one of {', '.join(callbacks.CALLBACK_NAMES)}.")
        body = validated(CallbackSerializer, request.data, name=name)
        result = callbacks.handle(callbacks.CallbackReport(name=name, **body), _bearer(request))
        return Response(result.as_response())


_drf_view = CallbackView.as_view()


@csrf_exempt
def callback_view(request, name: str):
    report = None
    if request.method == "POST" and name in callbacks.CALLBACK_NAMES:
        report = callback_body.report(name, request)
    if report is None:
        return _drf_view(request, name=name)
    try:
        result = callbacks.handle(report, _bearer(request))
    except DomainError as exc:
        return _json({"detail": exc.detail}, exc.http_status)
    return _json(result.as_response(), 200)


openapi.document_as(CallbackView, callback_view)  # in the schema: the DRF view that answers its errors


def _bearer(request) -> str | None:
    # META, not request.headers: that builds a dict of every header on each callback.
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _json(body: dict, status: int) -> HttpResponse:
    # The bytes and headers DRF's JSONRenderer and APIView give the same body.
    response = HttpResponse(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
                            content_type="application/json", status=status)
    response["Allow"] = "POST, OPTIONS"
    return response
