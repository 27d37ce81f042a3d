"""simbot as a black box: a real subprocess, real HTTP callbacks, real Redis pubsub."""
from __future__ import annotations

import json
import signal
import socket
import time
import uuid

from tests.simbot.conftest import TOKEN
from tests.waiting import wait_for

ENTRY = ["joining", "awaiting_admission", "started"]


def publish(redis_conn, channel: str, command: dict) -> dict:
    command = {"command_id": str(uuid.uuid4()), **command}
    redis_conn.publish(channel, json.dumps(command))
    return command


def leave(redis_conn, bot, channel: str | None = None) -> dict:
    channel = channel or f"bot_commands:meeting:{bot.meeting_id}"
    return publish(redis_conn, channel, {"action": "leave", "meeting_id": bot.meeting_id,
                                         "connection_id": bot.connection_id})


def received(redis_conn, meeting_id: int) -> list[dict]:
    return [json.loads(item) for item in redis_conn.lrange(f"simbot:received:{meeting_id}", 0, -1)]


def wait_received(redis_conn, meeting_id: int, count: int, timeout: float = 5.0) -> list[dict]:
    return wait_for(lambda: commands if len(commands := received(redis_conn, meeting_id)) >= count else None,
                    timeout=timeout, interval=0.02, what=f"simbot to record {count} command(s)")


def assert_stays(bot, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert bot.alive(), f"bot exited with {bot.proc.returncode}"
        time.sleep(0.05)


# --- the normal path ------------------------------------------------------------------------------
def test_reports_joining_then_awaiting_admission_then_started(launch, receiver):
    bot = launch()
    receiver.wait_calls("started")
    assert receiver.names() == ENTRY
    for call in receiver.calls:
        assert call.path == f"/bots/internal/callback/{call.name}"
        assert call.body == {"connection_id": bot.connection_id,
                             "container_id": f"botmanager-bot-{bot.meeting_id}-{bot.connection_id[:8]}"}
        assert "Authorization" not in call.headers


def test_stays_in_the_meeting_until_told_to_leave(launch, receiver):
    bot = launch()
    receiver.wait_calls("started")
    assert_stays(bot, 0.5)
    assert receiver.names() == ENTRY


def test_leave_on_the_meeting_channel_sends_exited_and_exits_0(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    leave(redis_conn, bot)
    assert bot.wait() == 0
    [exited] = receiver.of("exited")
    assert exited.body == {"connection_id": bot.connection_id, "exit_code": 0,
                           "reason": "self_initiated_leave", "completion_reason": "stopped"}


def test_leave_on_the_session_channel_sends_exited_and_exits_0(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    leave(redis_conn, bot, channel=f"bot_commands:{bot.connection_id}")
    assert bot.wait() == 0
    assert receiver.names() == ENTRY + ["exited"]


def test_leave_is_honoured_before_the_bot_is_active(launch, receiver, redis_conn):
    bot = launch(env={"SIMBOT_STEP_SECONDS": "5"})
    receiver.wait_calls("joining")
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == ["joining", "exited"]


def test_handled_commands_are_recorded_in_the_redis_list(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    command = leave(redis_conn, bot)
    assert bot.wait() == 0
    assert received(redis_conn, bot.meeting_id) == [command]


def test_a_command_published_on_both_channels_is_handled_once(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    command = {"action": "reconfigure", "meeting_id": bot.meeting_id, "uid": bot.connection_id,
               "language": "de", "task": "translate", "command_id": str(uuid.uuid4())}
    for channel in (f"bot_commands:meeting:{bot.meeting_id}", f"bot_commands:{bot.connection_id}"):
        redis_conn.publish(channel, json.dumps(command))
    wait_received(redis_conn, bot.meeting_id, 1)
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert received(redis_conn, bot.meeting_id)[0] == command
    assert len(received(redis_conn, bot.meeting_id)) == 2  # the reconfigure once, then the leave
    assert bot.log().count("reconfigured:") == 1


def test_reconfigure_applies_language_and_task_and_stays(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    command = publish(redis_conn, f"bot_commands:meeting:{bot.meeting_id}",
                      {"action": "reconfigure", "meeting_id": bot.meeting_id, "uid": bot.connection_id,
                       "language": "fr", "task": "translate"})
    assert wait_received(redis_conn, bot.meeting_id, 1) == [command]
    assert_stays(bot, 0.3)
    assert "reconfigured: language=fr task=translate" in bot.log()


def test_reconfigure_with_only_a_language_keeps_the_task(launch, receiver, redis_conn):
    bot = launch()
    receiver.wait_calls("started")
    publish(redis_conn, f"bot_commands:{bot.connection_id}",
            {"action": "reconfigure", "meeting_id": bot.meeting_id, "uid": bot.connection_id,
             "language": "es", "task": None})
    wait_received(redis_conn, bot.meeting_id, 1)
    assert_stays(bot, 0.2)
    assert "reconfigured: language=es task=transcribe" in bot.log()


def test_sigterm_sends_exited_and_exits_0(launch, receiver):
    bot = launch()
    receiver.wait_calls("started")
    bot.signal(signal.SIGTERM)
    assert bot.wait() == 0
    [exited] = receiver.of("exited")
    assert exited.body["exit_code"] == 0 and exited.body["completion_reason"] == "stopped"


def test_leave_true_in_a_callback_answer_makes_the_bot_leave(launch, receiver):
    receiver.script("awaiting_admission", (200, {"status": "ok", "meeting_id": 1, "leave": True}))
    bot = launch()
    assert bot.wait() == 0
    assert receiver.names() == ["joining", "awaiting_admission", "exited"]


# --- callbacks: retries ---------------------------------------------------------------------------
def test_callback_is_retried_after_a_5xx(launch, receiver):
    receiver.script("joining", (500, {"detail": "boom"}), (503, {"detail": "busy"}))
    launch()
    receiver.wait_calls("started")
    assert receiver.names() == ["joining", "joining", "joining", "awaiting_admission", "started"]


def test_callback_is_retried_while_the_manager_is_unreachable(launch):
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{placeholder.getsockname()[1]}/bots/internal/callback/exited"
    bot = launch(config={"botManagerCallbackUrl": dead_url}, env={"SIMBOT_CALLBACK_RETRY_SECONDS": "0.5"})
    wait_for(lambda: "callback joining gave up" in bot.log(), timeout=5, what="the bot to give up its retry budget")
    assert bot.log().count("callback joining attempt") >= 2


def test_callback_404_is_not_retried(launch, receiver):
    receiver.script("joining", (404, {"detail": "unknown connection_id"}))
    launch()
    receiver.wait_calls("started")
    assert receiver.names() == ENTRY


def test_callback_gives_up_after_the_retry_budget_and_goes_on(launch, receiver):
    receiver.script("joining", *[(500, {"detail": "down"})] * 1000)
    bot = launch(env={"SIMBOT_CALLBACK_RETRY_SECONDS": "0.4"})
    receiver.wait_calls("started", timeout=5)
    assert 2 <= receiver.names().count("joining") < 20
    assert "callback joining gave up" in bot.log()


# --- config and logging ---------------------------------------------------------------------------
def test_the_meeting_token_is_never_logged(launch, receiver, redis_conn):
    bot = launch(faults="restart_new_session")
    receiver.wait_calls("started", count=2)
    leave(redis_conn, bot)
    bot.wait()
    assert TOKEN not in bot.log()
    assert '"token": "<redacted>"' in bot.log()


def test_missing_bot_config_exits_2(launch):
    bot = launch(bot_config="")
    assert bot.wait() == 2
    assert "BOT_CONFIG is not set" in bot.log()


def test_unknown_fault_knob_exits_2(launch, receiver):
    bot = launch(faults="ignore_leave,no_such_knob")
    assert bot.wait() == 2
    assert "no_such_knob" in bot.log()
    assert receiver.names() == []


def test_faults_come_from_the_bot_name_prefix(launch, receiver):
    launch(bot_name="simbot:reorder_callbacks,duplicate_callbacks")
    receiver.wait_calls("started", count=2)
    assert receiver.names() == ["awaiting_admission"] * 2 + ["joining"] * 2 + ["started"] * 2


def test_faults_from_env_and_bot_name_combine(launch, receiver, redis_conn):
    bot = launch(bot_name="simbot:no_exit_callback", faults="reorder_callbacks")
    receiver.wait_calls("started")
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == ["awaiting_admission", "joining", "started"]


# --- fault knobs ----------------------------------------------------------------------------------
def test_ignore_leave_ignores_the_leave_command(launch, receiver, redis_conn):
    bot = launch(faults="ignore_leave")
    receiver.wait_calls("started")
    leave(redis_conn, bot)
    wait_received(redis_conn, bot.meeting_id, 1)
    assert_stays(bot, 0.5)
    assert receiver.of("exited") == []


def test_ignore_leave_ignores_sigterm_and_only_sigkill_ends_it(launch, receiver):
    bot = launch(faults="ignore_leave")
    receiver.wait_calls("started")
    bot.signal(signal.SIGTERM)
    assert_stays(bot, 0.5)
    bot.signal(signal.SIGKILL)
    assert bot.wait() == -signal.SIGKILL
    assert receiver.of("exited") == []


def test_ignore_leave_ignores_leave_true_in_a_callback_answer(launch, receiver):
    receiver.script("joining", (200, {"status": "ok", "meeting_id": 1, "leave": True}))
    bot = launch(faults="ignore_leave")
    receiver.wait_calls("started")
    assert_stays(bot, 0.3)
    assert receiver.names() == ENTRY


def test_no_exit_callback_leaves_on_command_without_exited(launch, receiver, redis_conn):
    bot = launch(faults="no_exit_callback")
    receiver.wait_calls("started")
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == ENTRY


def test_no_exit_callback_exits_on_sigterm_without_exited(launch, receiver):
    bot = launch(faults="no_exit_callback")
    receiver.wait_calls("started")
    bot.signal(signal.SIGTERM)
    assert bot.wait() == 0
    assert receiver.names() == ENTRY


def test_die_active_exits_3_silently_after_the_delay(launch, receiver):
    bot = launch(faults="die_active", env={"SIMBOT_DIE_AFTER_SECONDS": "0.5"})
    receiver.wait_calls("started")
    active_at = time.monotonic()
    assert bot.wait() == 3
    assert time.monotonic() - active_at >= 0.4
    assert receiver.names() == ENTRY


def test_duplicate_callbacks_sends_every_callback_twice(launch, receiver, redis_conn):
    bot = launch(faults="duplicate_callbacks")
    receiver.wait_calls("started", count=2)
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == [name for name in ENTRY + ["exited"] for _ in range(2)]


def test_reorder_callbacks_sends_awaiting_admission_before_joining(launch, receiver):
    launch(faults="reorder_callbacks")
    receiver.wait_calls("started")
    assert receiver.names() == ["awaiting_admission", "joining", "started"]


def test_restart_new_session_registers_a_new_connection_id_with_the_token(launch, receiver):
    bot = launch(faults="restart_new_session")
    receiver.wait_calls("started", count=2)
    assert receiver.names() == ENTRY + ["joining", "started"]
    first_joining, second_joining = receiver.of("joining")
    new_id = second_joining.body["connection_id"]
    assert str(uuid.UUID(new_id, version=4)) == new_id and new_id != bot.connection_id
    assert second_joining.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in first_joining.headers
    second_started = receiver.of("started")[1]
    assert second_started.body["connection_id"] == new_id
    assert "Authorization" not in second_started.headers  # registered by the first callback


def test_restart_new_session_listens_on_the_new_session_channel_only(launch, receiver, redis_conn):
    bot = launch(faults="restart_new_session")
    receiver.wait_calls("started", count=2)
    new_id = receiver.of("started")[1].body["connection_id"]
    leave(redis_conn, bot, channel=f"bot_commands:{bot.connection_id}")  # the old session's
    assert_stays(bot, 0.3)
    assert received(redis_conn, bot.meeting_id) == []
    leave(redis_conn, bot, channel=f"bot_commands:{new_id}")
    assert bot.wait() == 0
    assert receiver.of("exited")[0].body["connection_id"] == new_id


def test_a_restarted_session_its_credentials_refuse_to_hear_still_leaves_on_the_meeting_channel(
        launch, receiver, redis_conn, meeting_id):
    # A launched bot's own Redis user (meetings/launching/bot_credentials.py) hears the channels of the
    # session it was launched as and of its meeting, not those of a session it starts later.
    from meetings.launching import bot_credentials

    uid = str(uuid.uuid4())
    bot_credentials.create(meeting_id, uid)
    try:
        bot = launch(faults="restart_new_session",
                     config={"connectionId": uid, "redisUrl": bot_credentials.bot_redis_url(meeting_id, uid)})
        receiver.wait_calls("started", count=2)
        assert "not allowed to listen on" in bot.log()
        leave(redis_conn, bot)  # on the meeting channel
        assert bot.wait() == 0
        assert receiver.of("exited")[0].body["connection_id"] != uid  # the new session left
    finally:
        bot_credentials.remove_for(meeting_id, [uid])


def test_stuck_joining_never_gets_past_joining_but_leaves(launch, receiver, redis_conn):
    bot = launch(faults="stuck_joining")
    receiver.wait_calls("joining")
    assert_stays(bot, 0.5)  # ten steps' worth
    assert receiver.names() == ["joining"]
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == ["joining", "exited"]


def test_stuck_waiting_room_never_gets_admitted_but_leaves(launch, receiver, redis_conn):
    bot = launch(faults="stuck_waiting_room")
    receiver.wait_calls("awaiting_admission")
    assert_stays(bot, 0.5)
    assert receiver.names() == ["joining", "awaiting_admission"]
    leave(redis_conn, bot)
    assert bot.wait() == 0
    assert receiver.names() == ["joining", "awaiting_admission", "exited"]


def test_fail_joining_reports_a_failed_exit_and_exits_1(launch, receiver):
    bot = launch(faults="fail_joining")
    assert bot.wait() == 1
    assert receiver.names() == ["joining", "exited"]
    exited = receiver.of("exited")[0].body
    assert exited["connection_id"] == bot.connection_id
    assert exited["exit_code"] == 1 and exited["failure_stage"] == "joining"


def test_steps_are_paced_by_simbot_step_seconds(launch, receiver):
    launch(env={"SIMBOT_STEP_SECONDS": "0.4"})
    receiver.wait_calls("joining")
    joined_at = time.monotonic()
    receiver.wait_calls("started")
    assert time.monotonic() - joined_at >= 0.7  # two steps of 0.4 s, minus polling slack
