"""`/bots` endpoints: request, stop, reconfigure, and the running bots as the backend sees them."""
from __future__ import annotations

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import bots, running
from .serializers import BotConfigSerializer, BotRequestSerializer, MeetingSerializer
from .util import validated, validated_meeting_ref


class BotsView(APIView):
    def post(self, request):
        body = validated(BotRequestSerializer, request.data)
        meeting = bots.request_bot(request.user, bots.BotRequest(**body))
        return Response(MeetingSerializer(meeting).data, status=status.HTTP_201_CREATED)


class BotDetailView(APIView):
    def delete(self, request, platform: str, native_meeting_id: str):
        message = bots.stop_bot(request.user, *validated_meeting_ref(platform, native_meeting_id))
        return Response({"message": message}, status=status.HTTP_202_ACCEPTED)


class BotConfigView(APIView):
    def put(self, request, platform: str, native_meeting_id: str):
        body = validated(BotConfigSerializer, request.data)
        bots.reconfigure_bot(request.user, *validated_meeting_ref(platform, native_meeting_id),
                             language=body.get("language"), task=body.get("task"))
        return Response({"message": "Reconfiguration request accepted and sent to the bot."},
                        status=status.HTTP_202_ACCEPTED)


class BotStatusView(APIView):
    def get(self, request):
        return Response({"running_bots": running.running_bots(request.user)})

