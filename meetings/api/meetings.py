"""`/meetings` endpoints: list, detail with transitions, data patch, deletion."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from common.openapi import VALIDATION_ERROR, MessageSerializer, error
from meetings import services as bots
from meetings.api.serializers import (MeetingDataPatchSerializer, MeetingDetailSerializer,
                                      MeetingListQuerySerializer, MeetingListSerializer, MeetingSerializer)
from meetings.api.util import MEETING_REF_PARAMETERS, validated, validated_meeting_ref
from meetings.lifecycle.errors import MeetingDataTooLarge, MeetingNotFound
from meetings.models import Meeting


class MeetingsView(APIView):
    @extend_schema(operation_id="list_meetings", tags=["meetings"], parameters=[MeetingListQuerySerializer],
                   summary="The user's meetings, newest first",
                   responses={200: MeetingListSerializer})
    def get(self, request):
        # A plain dict: an empty value (`?status=`) is then refused, not taken as absent.
        query = validated(MeetingListQuerySerializer, request.query_params.dict())
        meetings = bots.list_meetings(request.user, **query)
        return Response({"meetings": MeetingSerializer(meetings, many=True).data})


class MeetingDetailView(APIView):
    @extend_schema(operation_id="get_meeting", tags=["meetings"], summary="A meeting with its transition history",
                   responses={200: MeetingDetailSerializer})
    def get(self, request, meeting_id: int):
        meeting = (Meeting.objects.filter(user=request.user, pk=meeting_id, redacted_at__isnull=True)
                   .prefetch_related("transitions").first())
        if meeting is None:
            raise MeetingNotFound(f"Meeting {meeting_id} not found.")
        return Response(MeetingDetailSerializer(meeting).data)


class MeetingByNativeIdView(APIView):
    @extend_schema(operation_id="update_meeting_data", parameters=MEETING_REF_PARAMETERS, tags=["meetings"], request=MeetingDataPatchSerializer,
                   summary="Merge fields into the data of the user's newest meeting for this platform and id",
                   responses={200: MeetingSerializer})
    def patch(self, request, platform: str, native_meeting_id: str):
        body = validated(MeetingDataPatchSerializer, request.data)
        try:
            meeting = bots.update_meeting_data(request.user, *validated_meeting_ref(platform, native_meeting_id),
                                               body["data"])
        except MeetingDataTooLarge as exc:
            raise ValidationError({"data": [str(exc)]}) from None
        return Response(MeetingSerializer(meeting).data)

    @extend_schema(operation_id="delete_meetings", parameters=MEETING_REF_PARAMETERS, tags=["meetings"],
                   summary="Delete the personal data of the user's ended meetings for this platform and id",
                   description="Each ended meeting for this platform and id loses its data, identifiers and the "
                               "bodies of its transitions (its events); it keeps its status, times and platform "
                               "for the counts, and is no longer listed. Repeating the request is harmless.",
                   responses={200: MessageSerializer, 422: VALIDATION_ERROR,
                              409: error("A meeting for this platform and id has not ended; stop it first.")})
    def delete(self, request, platform: str, native_meeting_id: str):
        count = bots.delete_meetings(request.user, *validated_meeting_ref(platform, native_meeting_id))
        if count == 0:
            return Response({"message": f"The meetings for {platform}/{native_meeting_id} were already deleted."})
        return Response({"message": f"Deleted the data of {count} meeting(s) for {platform}/{native_meeting_id}."})
