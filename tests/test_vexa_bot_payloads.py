"""What a real Vexa bot (vexa-bot of Vexa 0.10.x) sends to the callback endpoints, payload shape by
payload shape, written from the bot's own definitions in Vexa-ai/vexa, services/vexa-bot/core/src:
- services/unified-callback.ts: `UnifiedCallbackPayload` (every report is a POST of it to
  `.../callback/status_change`), its `MeetingStatus`, `CompletionReason`, `FailureStage` types and
  `mapExitReasonToStatus` (which status, reason and stage each way of leaving reports);
- utils.ts: callJoiningCallback, callAwaitingAdmissionCallback, callStartupCallback (active),
  callNeedsHumanHelpCallback;
- index.ts: performGracefulLeave (the terminal report, with `error_details` from
  platforms/shared/meetingFlow.ts).
JSON.stringify drops the payload's undefined fields, so each body below carries only what the bot
sets. Then what the manager does with values it does not define: mapped, kept, never a 422."""
from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from meetings.bot_protocol.channels import status_channel
from meetings.launching.launch import build_bot_config
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session, make_user
from tests.http import answer
from tests.support import published, subscribe
from webhooks.models import WebhookDelivery

pytestmark = pytest.mark.django_db

S = MeetingStatus
TIMESTAMP = "2026-11-30T10:00:00.000Z"
BOT_RESOURCES = {"samples": 42, "peak_memory_bytes": 734003200, "last_memory_bytes": 612368384,
                 "cpu_usage_usec_total": 91234567, "sampler_started_at": "2026-11-30T09:00:00.000Z",
                 "cgroup_available": True}
BOT_LOGS = ['{"ts":"2026-11-30T09:59:58Z","level":"info","msg":"[Graceful Leave] Initiating"}',
            '{"ts":"2026-11-30T09:59:59Z","level":"info","msg":"[Graceful Leave] Page closed."}']


def launched(status: str, user=None) -> tuple[Meeting, str]:
    meeting = make_meeting(user, status=status)
    session = make_session(meeting)
    meeting.refresh_from_db()
    return meeting, str(session.session_uid)


def status_change(uid: str, **fields) -> dict:
    """A UnifiedCallbackPayload as the bot builds it (container_id is its container name)."""
    return answer(APIClient().post("/bots/internal/callback/status_change",
                                   {"connection_id": uid, "container_id": "vexa-bot-7f3a", "timestamp": TIMESTAMP,
                                    **fields}, format="json"), 200)


def reload(meeting) -> Meeting:
    return Meeting.objects.get(pk=meeting.pk)


def last_record(meeting) -> MeetingTransition:
    return MeetingTransition.objects.filter(meeting=meeting).order_by("id").last()


# --- The bot's payload shapes ----------------------------------------------------------------------
@pytest.mark.parametrize("status,from_status", [
    ("joining", S.REQUESTED), ("awaiting_admission", S.JOINING), ("active", S.AWAITING_ADMISSION)])
def test_a_vexa_bots_progress_report_moves_the_meeting(status, from_status):
    """utils.ts callJoiningCallback / callAwaitingAdmissionCallback / callStartupCallback:
    `{connection_id, container_id, status, timestamp}` (unified-callback.ts UnifiedCallbackPayload)."""
    meeting, uid = launched(from_status)

    body = status_change(uid, status=status)

    assert (body["status"], body["meeting_status"]) == ("processed", status)
    record = last_record(meeting)
    assert (record.to_status, record.metadata["container_id"], record.metadata["bot_timestamp"]) == (
        status, "vexa-bot-7f3a", TIMESTAMP)


def test_a_vexa_bots_needs_human_help_is_a_condition_of_the_live_meeting_not_a_status(
        redis_conn, django_capture_on_commit_callbacks):
    """utils.ts callNeedsHumanHelpCallback: `{connection_id, container_id, status: "needs_human_help",
    reason, timestamp}` (unified-callback.ts MeetingStatus includes needs_human_help)."""
    meeting, uid = launched(S.ACTIVE, make_user(webhook_url="https://hooks.example.com/bm"))
    pubsub = subscribe(redis_conn, status_channel(meeting.id))

    with django_capture_on_commit_callbacks(execute=True):
        body = status_change(uid, status="needs_human_help", reason="Gemini note-taking consent prompt")

    assert (body["status"], body["meeting_status"]) == ("processed", S.ACTIVE)
    fresh = reload(meeting)
    assert (fresh.status, fresh.deadline_at) == (S.ACTIVE, meeting.deadline_at)
    assert fresh.data["needs_human_help"]["reason"] == "Gemini note-taking consent prompt"
    record = last_record(meeting)
    assert (record.from_status, record.to_status, record.applied, record.metadata["condition"]) == (
        S.ACTIVE, S.ACTIVE, True, "needs_human_help")
    assert record.reason == "bot reported needs_human_help: Gemini note-taking consent prompt"
    [event] = published(pubsub)[status_channel(meeting.id)]
    assert event["payload"]["status"] == S.ACTIVE
    assert event["payload"]["needs_human_help"]["reason"] == "Gemini note-taking consent prompt"
    webhook = json.loads(WebhookDelivery.objects.get(meeting=meeting, transition=record).payload)
    assert webhook["status_change"]["condition"] == "needs_human_help"
    assert webhook["meeting"]["data"]["needs_human_help"]["reason"] == "Gemini note-taking consent prompt"


def test_a_vexa_bots_clean_exit_with_its_logs_and_resources_completes_and_keeps_them():
    """index.ts performGracefulLeave → unified-callback.ts mapExitReasonToStatus(reason, 0):
    `{status: "completed", reason, exit_code: 0, completion_reason, timestamp, bot_logs, bot_resources}`
    (UnifiedCallbackPayload's v0.10.5.3 terminal-only fields)."""
    meeting, uid = launched(S.ACTIVE)

    status_change(uid, status="completed", reason="left_alone", exit_code=0, completion_reason="left_alone",
                  bot_logs=BOT_LOGS, bot_resources=BOT_RESOURCES)

    fresh = reload(meeting)
    assert (fresh.status, fresh.completion_reason) == (S.COMPLETED, "left_alone")
    assert fresh.data["bot_resources"] == BOT_RESOURCES
    record = last_record(meeting)
    assert record.metadata["bot_logs"] == BOT_LOGS
    assert record.metadata["bot_resources"] == BOT_RESOURCES
    assert "bot_completion_reason" not in fresh.data


def test_a_vexa_bots_max_bot_time_exceeded_completes_with_max_duration_and_keeps_the_bots_word():
    """unified-callback.ts CompletionReason "max_bot_time_exceeded": `{status: "completed", exit_code: 0,
    completion_reason: "max_bot_time_exceeded", ...}`."""
    meeting, uid = launched(S.ACTIVE)

    body = status_change(uid, status="completed", reason="max_bot_time_exceeded", exit_code=0,
                         completion_reason="max_bot_time_exceeded")

    assert body["meeting_status"] == S.COMPLETED
    fresh = reload(meeting)
    assert (fresh.completion_reason, fresh.data["completion_reason"]) == ("max_duration", "max_duration")
    assert fresh.data["bot_completion_reason"] == "max_bot_time_exceeded"
    assert last_record(meeting).metadata["bot_completion_reason"] == "max_bot_time_exceeded"


def test_a_vexa_bots_crash_fails_at_its_stage_with_its_error_details_and_logs():
    """index.ts performGracefulLeave(page, 1, "post_join_setup_error", errorDetails) with the
    errorDetails of platforms/shared/meetingFlow.ts → mapExitReasonToStatus: `{status: "failed",
    reason, exit_code: 1, error_details, failure_stage: <tracked stage>, bot_logs, bot_resources}`."""
    meeting, uid = launched(S.ACTIVE)
    details = {"error_message": "Target closed", "error_stack": "Error: Target closed\n    at ...",
               "error_name": "Error", "context": "post_join_setup_error", "platform": "google_meet",
               "timestamp": TIMESTAMP}

    status_change(uid, status="failed", reason="post_join_setup_error", exit_code=1, error_details=details,
                  failure_stage="active", bot_logs=BOT_LOGS, bot_resources=BOT_RESOURCES)

    fresh = reload(meeting)
    assert (fresh.status, fresh.failure_stage, fresh.data["last_error"]) == (S.FAILED, "active", details)
    record = last_record(meeting)
    assert (record.failure_stage, record.metadata["bot_logs"], record.metadata["exit_code"]) == ("active", BOT_LOGS, 1)
    assert fresh.sessions.get().exit_code == 1


def test_a_vexa_bot_rejected_by_the_host_fails_at_awaiting_admission_and_keeps_its_completion_reason():
    """unified-callback.ts mapExitReasonToStatus("admission_rejected_by_admin", 0): `{status: "failed",
    exit_code: 0, completion_reason: "awaiting_admission_rejected", failure_stage: "awaiting_admission"}`."""
    meeting, uid = launched(S.AWAITING_ADMISSION)

    status_change(uid, status="failed", reason="admission_rejected_by_admin", exit_code=0,
                  completion_reason="awaiting_admission_rejected", failure_stage="awaiting_admission")

    fresh = reload(meeting)
    assert (fresh.status, fresh.failure_stage) == (S.FAILED, "awaiting_admission")
    assert fresh.data["bot_completion_reason"] == "awaiting_admission_rejected"


def test_a_vexa_bot_without_a_meeting_url_fails_at_requested():
    """index.ts / meetingFlow.ts gracefulLeave(page, 1, "missing_meeting_url") → mapExitReasonToStatus:
    `{status: "failed", reason: "missing_meeting_url", exit_code: 1, failure_stage: "requested"}`."""
    meeting, uid = launched(S.JOINING)

    status_change(uid, status="failed", reason="missing_meeting_url", exit_code=1, failure_stage="requested")

    fresh = reload(meeting)
    assert (fresh.status, fresh.failure_stage, fresh.data["last_error"]) == (S.FAILED, "requested",
                                                                            "missing_meeting_url")


def test_a_vexa_bots_speaker_events_are_kept_with_the_transition():
    """unified-callback.ts UnifiedCallbackPayload.speaker_events (`any[]`, passed by
    callStatusChangeCallback's speakerEvents argument)."""
    meeting, uid = launched(S.ACTIVE)
    events = [{"event_type": "SPEAKER_START", "participant_name": "Ada", "relative_timestamp_ms": 1200}]

    status_change(uid, status="completed", exit_code=0, completion_reason="stopped", speaker_events=events)

    assert last_record(meeting).metadata["speaker_events"] == events


def test_the_bot_config_names_the_callback_url_as_the_vexa_bot_reads_it(settings):
    """unified-callback.ts callStatusChangeCallback returns without sending anything unless
    `botConfig.meetingApiCallbackUrl` is set, and posts to it with '/exited' replaced by '/status_change'."""
    settings.PUBLIC_BASE_URL = "http://manager.example:8000"
    meeting = make_meeting(status=S.REQUESTED)

    config = build_bot_config(meeting, make_session(meeting), "bot-1")

    assert config["meetingApiCallbackUrl"] == "http://manager.example:8000/bots/internal/callback/exited"
    assert config["meetingApiCallbackUrl"] == config["botManagerCallbackUrl"]


# --- Liberal in what it accepts --------------------------------------------------------------------
def test_an_unknown_completion_reason_completes_stopped_and_keeps_the_bots_word():
    meeting, uid = launched(S.ACTIVE)

    status_change(uid, status="completed", exit_code=0, completion_reason="stopped_with_no_audio")

    fresh = reload(meeting)
    assert (fresh.status, fresh.completion_reason, fresh.data["bot_completion_reason"]) == (
        S.COMPLETED, "stopped", "stopped_with_no_audio")


def test_an_unknown_failure_stage_fails_in_the_status_the_meeting_was_in_and_keeps_the_bots_word():
    meeting, uid = launched(S.AWAITING_ADMISSION)

    answer(APIClient().post("/bots/internal/callback/exited",
                            {"connection_id": uid, "exit_code": 3, "failure_stage": "leaving"}, format="json"), 200)

    fresh = reload(meeting)
    assert (fresh.status, fresh.failure_stage, fresh.data["bot_failure_stage"]) == (
        S.FAILED, "awaiting_admission", "leaving")
    assert last_record(meeting).metadata["bot_failure_stage"] == "leaving"


@pytest.mark.parametrize("exit_code,status,outcome", [(0, S.COMPLETED, "stopped"), (137, S.FAILED, "active")])
def test_an_unknown_status_with_an_exit_code_ends_the_meeting_by_its_exit_code(exit_code, status, outcome):
    meeting, uid = launched(S.ACTIVE)

    status_change(uid, status="crashed_politely", exit_code=exit_code)

    fresh = reload(meeting)
    assert fresh.status == status
    assert (fresh.completion_reason or fresh.failure_stage) == outcome
    assert fresh.data["bot_status"] == "crashed_politely"


@pytest.mark.parametrize("status", ["stopping", "requested", "recording_paused"])
def test_a_status_a_bot_does_not_report_without_an_exit_code_is_recorded_and_changes_no_status(status):
    meeting, uid = launched(S.ACTIVE)

    body = status_change(uid, status=status, reason="just saying")

    assert (body["status"], body["meeting_status"]) == ("processed", S.ACTIVE)
    fresh = reload(meeting)
    assert fresh.status == S.ACTIVE
    assert (fresh.data["bot_reported_status"]["status"], fresh.data["bot_reported_status"]["reason"]) == (
        status, "just saying")
    assert last_record(meeting).metadata["bot_status"] == status


def test_needs_human_help_holds_until_the_status_changes():
    meeting, uid = launched(S.AWAITING_ADMISSION)
    status_change(uid, status="needs_human_help", reason="sign-in required")

    status_change(uid, status="active")

    fresh = reload(meeting)
    assert fresh.status == S.ACTIVE
    assert "needs_human_help" not in fresh.data


def test_the_same_needs_human_help_twice_answers_ok_and_records_it_once():
    meeting, uid = launched(S.ACTIVE)
    status_change(uid, status="needs_human_help", reason="consent prompt")

    body = status_change(uid, status="needs_human_help", reason="consent prompt")

    assert body["status"] == "ok"
    assert MeetingTransition.objects.filter(meeting=meeting, metadata__condition="needs_human_help").count() == 1


def test_needs_human_help_after_the_meeting_ended_is_recorded_refused_and_answers_leave():
    meeting, uid = launched(S.COMPLETED)

    body = status_change(uid, status="needs_human_help", reason="late")

    assert (body["status"], body["meeting_status"], body["leave"]) == ("ok", S.COMPLETED, True)
    assert "needs_human_help" not in reload(meeting).data
    record = last_record(meeting)
    assert (record.applied, record.metadata["condition"]) == (False, "needs_human_help")


def test_needs_human_help_from_a_stale_session_changes_nothing():
    meeting, old_uid = launched(S.ACTIVE)
    make_session(meeting)  # the bot restarted: a newer session is current

    body = status_change(old_uid, status="needs_human_help", reason="stale")

    assert (body["status"], body["leave"]) == ("ok", True)
    assert "needs_human_help" not in reload(meeting).data


# --- Size caps -------------------------------------------------------------------------------------
def test_only_the_tail_of_a_bots_logs_is_kept_each_line_cut(settings):
    settings.CALLBACK_BOT_LOGS_MAX_LINES = 3
    settings.CALLBACK_BOT_LOG_LINE_MAX_CHARS = 20
    meeting, uid = launched(S.ACTIVE)
    lines = [f"line {n}" for n in range(10)] + ["x" * 100]

    status_change(uid, status="failed", exit_code=1, bot_logs=lines)

    kept = last_record(meeting).metadata["bot_logs"]
    assert kept[0] == "[8 earlier lines not kept]"
    assert kept[1:3] == ["line 8", "line 9"]
    assert kept[3].startswith("x" * 20) and "truncated: 100 characters" in kept[3]


def test_large_bot_resources_and_speaker_events_are_capped(settings):
    settings.CALLBACK_EXTRA_MAX_CHARS = 200
    meeting, uid = launched(S.ACTIVE)
    events = [{"event_type": "SPEAKER_START", "participant_name": "p" * 50} for _ in range(100)]

    status_change(uid, status="completed", exit_code=0, speaker_events=events,
                  bot_resources={"samples": 1, "junk": "j" * 1000})

    fresh = reload(meeting)
    metadata = last_record(meeting).metadata
    assert "truncated" in metadata["speaker_events"] and len(metadata["speaker_events"]) < 300
    assert "truncated" in fresh.data["bot_resources"] and len(fresh.data["bot_resources"]) < 300
