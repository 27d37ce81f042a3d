"""`/meetings` endpoints: list, detail with transitions, data patch, deletion."""
from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from .. import bots
from ..errors import MeetingNotFound
from ..models import Meeting
from .serializers import MeetingDataPatchSerializer, MeetingDetailSerializer, MeetingSerializer
from .util import validated, validated_meeting_ref


class MeetingsView(APIView):
    def get(self, request):
        meetings = Meeting.objects.filter(user=request.user).order_by("-created_at", "-id")
        return Response({"meetings": MeetingSerializer(meetings, many=True).data})


class MeetingDetailView(APIView):
    def get(self, request, meeting_id: int):
        meeting = (Meeting.objects.filter(user=request.user, pk=meeting_id)
                   .prefetch_related("transitions").first())
        if meeting is None:
            raise MeetingNotFound(f"Meeting {meeting_id} not found.")
        return Response(MeetingDetailSerializer(meeting).data)


class MeetingByNativeIdView(APIView):
    def patch(self, request, platform: str, native_meeting_id: str):
        body = validated(MeetingDataPatchSerializer, request.data)
        meeting = bots.update_meeting_data(request.user, *validated_meeting_ref(platform, native_meeting_id),
                                           body["data"])
        return Response(MeetingSerializer(meeting).data)

    def delete(self, request, platform: str, native_meeting_id: str):
        count = bots.delete_meetings(request.user, *validated_meeting_ref(platform, native_meeting_id))
        return Response({"message": f"Deleted {count} meeting(s) for {platform}/{native_meeting_id}."})
