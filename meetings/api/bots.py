"""`/bots` endpoints: request, stop, reconfigure, and the running bots as the backend sees them."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from common.openapi import VALIDATION_ERROR, MessageSerializer, error
from idempotency import http as idempotency
from meetings import running, services as bots
from meetings.api.serializers import (BotConfigSerializer, BotRequestSerializer, MeetingSerializer,
                                      RunningBotsSerializer)
from meetings.api.util import MEETING_REF_PARAMETERS, validated, validated_meeting_ref

BACKEND_UNAVAILABLE = "The bot backend (or Redis) is unavailable; nothing was changed, retry later."


class BotsView(APIView):
    launches_bots = True  # POST takes from the bot-request bucket too (common/ratelimit.py)

    @extend_schema(operation_id="request_bot", tags=["bots"], request=BotRequestSerializer,
                   parameters=idempotency.schema_parameters(),
                   summary="Request a bot for a meeting",
                   description="Creates the meeting in `requested`; the bot is launched once the request "
                               "commits (a launch failure ends the meeting `failed`).",
                   responses=idempotency.schema_responses({
                       201: MeetingSerializer,
                       403: error("Missing or invalid API key, or the user's concurrent bot limit is "
                                  "reached ('User has reached the maximum concurrent bot limit (N).')."),
                       409: error("The user already has a live meeting for this platform and id, or "
                                  "(with join_at) SCHEDULED_BOTS_PER_USER bots scheduled already.")}))
    @idempotency.idempotent
    def post(self, request):
        body = validated(BotRequestSerializer, request.data)
        meeting = bots.request_bot(request.user, bots.BotRequest(**body))
        return Response(MeetingSerializer(meeting).data, status=status.HTTP_201_CREATED)


class BotDetailView(APIView):
    @extend_schema(operation_id="stop_bot", parameters=idempotency.schema_parameters(*MEETING_REF_PARAMETERS),
                   tags=["bots"], summary="Stop the bot(s) of a meeting",
                   description="Stops every live meeting of the user for this platform and id; idempotent "
                               "(202 'Meeting already <status>.' when all have ended).",
                   responses=idempotency.schema_responses({202: MessageSerializer, 422: VALIDATION_ERROR}))
    @idempotency.idempotent
    def delete(self, request, platform: str, native_meeting_id: str):
        message = bots.stop_bot(request.user, *validated_meeting_ref(platform, native_meeting_id))
        return Response({"message": message}, status=status.HTTP_202_ACCEPTED)


class BotConfigView(APIView):
    @extend_schema(operation_id="reconfigure_bot", parameters=idempotency.schema_parameters(*MEETING_REF_PARAMETERS),
                   tags=["bots"], request=BotConfigSerializer,
                   summary="Change the language or task of an active bot",
                   responses=idempotency.schema_responses({202: MessageSerializer,
                                                           409: error("The meeting is not active."),
                                                           503: error(BACKEND_UNAVAILABLE)}))
    @idempotency.idempotent
    def put(self, request, platform: str, native_meeting_id: str):
        body = validated(BotConfigSerializer, request.data)
        bots.reconfigure_bot(request.user, *validated_meeting_ref(platform, native_meeting_id),
                             language=body.get("language"), task=body.get("task"))
        return Response({"message": "Reconfiguration request accepted and sent to the bot."},
                        status=status.HTTP_202_ACCEPTED)


class BotStatusView(APIView):
    @extend_schema(operation_id="running_bots", tags=["bots"], summary="The user's running bots, as the backend lists them",
                   responses={200: RunningBotsSerializer, 503: error(BACKEND_UNAVAILABLE)})
    def get(self, request):
        return Response({"running_bots": running.running_bots(request.user)})
