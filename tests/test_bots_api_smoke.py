import pytest

pytestmark = pytest.mark.django_db


def test_post_bot_creates_requested_meeting(api_client, api_user):
    r = api_client.post("/bots", {"platform": "google_meet", "native_meeting_id": "abc-defg-hij",
                                  "bot_name": "Rec", "language": "en", "task": "transcribe"}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "requested"
    assert body["constructed_meeting_url"] == "https://meet.google.com/abc-defg-hij"
    assert body["data"] == {"bot_name": "Rec", "language": "en", "task": "transcribe"}
    assert body["user_id"] == api_user.id


def test_callback_moves_meeting(api_client):
    from meetings.models import Meeting
    from tests.factories import make_session

    r = api_client.post("/bots", {"platform": "zoom", "native_meeting_id": "123456789", "passcode": "xyz"}, format="json")
    assert r.json()["constructed_meeting_url"] == "https://zoom.us/j/123456789?pwd=xyz"
    meeting = Meeting.objects.get(pk=r.json()["id"])
    session = make_session(meeting)
    r = api_client.post("/bots/internal/callback/started", {"connection_id": str(session.session_uid)}, format="json")
    assert r.status_code == 200, r.content
    assert r.json() == {"status": "processed", "meeting_id": meeting.id, "meeting_status": "active"}
    r = api_client.get(f"/meetings/{meeting.id}")
    assert [t["to"] for t in r.json()["transitions"]] == ["requested", "active"]
    r = api_client.delete("/bots/zoom/123456789")
    assert r.status_code == 202, r.content
    r = api_client.post("/bots/internal/callback/exited", {"connection_id": str(session.session_uid), "exit_code": 0}, format="json")
    assert r.json() == {"status": "processed", "meeting_id": meeting.id, "meeting_status": "completed", "leave": True}
