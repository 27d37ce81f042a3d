"""`/bots/internal/callback/<name>`: the bot protocol. No API key: the connection id is the
capability, and a new session proves itself with the meeting token."""
from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from .. import callbacks
from ..errors import NotFound
from .serializers import CallbackSerializer
from .util import validated


class CallbackView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def post(self, request, name: str):
        if name not in callbacks.CALLBACK_NAMES:
            raise NotFound(f"Unknown callback {name!r}; use one of {', '.join(callbacks.CALLBACK_NAMES)}.")
        body = validated(CallbackSerializer, request.data, name=name)
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        result = callbacks.handle(callbacks.CallbackReport(name=name, **body), bearer)
        return Response(result.as_response())
