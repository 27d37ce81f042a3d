from django.urls import path

from meetings.api import bots, callbacks, events, meetings

urlpatterns = [
    path("bots", bots.BotsView.as_view()),
    path("bots/status", bots.BotStatusView.as_view()),
    path("bots/internal/callback/<str:name>", callbacks.callback_view),
    path("bots/<str:platform>/<str:native_meeting_id>", bots.BotDetailView.as_view()),
    path("bots/<str:platform>/<str:native_meeting_id>/config", bots.BotConfigView.as_view()),
    path("meetings", meetings.MeetingsView.as_view()),
    path("meetings/<int:meeting_id>", meetings.MeetingDetailView.as_view()),
    path("meetings/<str:platform>/<str:native_meeting_id>", meetings.MeetingByNativeIdView.as_view()),
    path("events", events.EventsView.as_view()),
    path("events/stream", events.EventStreamView.as_view()),
]
