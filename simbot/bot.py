"""The bot's life: subscribe to its command channels, report joining → awaiting_admission →
started, stay in the meeting until told to leave (Redis command, `leave: true` in a callback
answer, SIGTERM), then report `exited` and exit. Fault knobs bend this path (see README.md)."""
from __future__ import annotations

import json
import logging
import select
import signal
import socket
import time
import uuid
from collections import deque

import redis

from simbot.callbacks import CallbackClient
from simbot.config import BotConfig

log = logging.getLogger("simbot")

# The loop sleeps until a command arrives, a signal comes, or its next timed step is due; with
# nothing to do it still wakes this often (a storm test runs hundreds of idle bots on 2 cores:
# polling every 50 ms cost them more than a core).
IDLE_WAKE_SECONDS = 1.0
# Without a signal wake-up fd (not in the main thread) a signal is only seen at the next wake-up.
POLL_SECONDS = 0.05
SUBSCRIBE_CONFIRM_SECONDS = 5.0
RECEIVED_TTL_SECONDS = 24 * 3600
FAIL_JOINING = "<fail_joining>"  # a plan step that is not a callback name


def received_list(meeting_id: int) -> str:
    """Test affordance: every command the bot handled, as JSON, in arrival order."""
    return f"simbot:received:{meeting_id}"


def meeting_channel(meeting_id: int) -> str:
    return f"bot_commands:meeting:{meeting_id}"


def session_channel(connection_id: str) -> str:
    return f"bot_commands:{connection_id}"


def plan(cfg: BotConfig) -> list[str]:
    """The callbacks the bot reports on its way in. The first matching knob wins."""
    if cfg.has("fail_joining"):
        return ["joining", FAIL_JOINING]
    if cfg.has("stuck_joining"):
        return ["joining"]
    if cfg.has("stuck_waiting_room"):
        return ["joining", "awaiting_admission"]
    if cfg.has("reorder_callbacks"):
        return ["awaiting_admission", "joining", "started"]
    return ["joining", "awaiting_admission", "started"]


class BotExit(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class SimBot:
    def __init__(self, cfg: BotConfig, redis_client: redis.Redis, callbacks: CallbackClient):
        self.cfg = cfg
        self.redis = redis_client
        self.pubsub = redis_client.pubsub()
        self.callbacks = callbacks
        self.pending = deque(plan(cfg))
        self.next_step_at = 0.0
        self.active_since: float | None = None
        self.restarted = False
        self.register_session = False  # the next callback carries the meeting token
        self.seen_command_ids: set[str] = set()
        self.stop_signal: int | None = None
        self._wakeup: socket.socket | None = None
        self._wakeup_writer: socket.socket | None = None

    def on_signal(self, signum, frame) -> None:
        # Only set a flag: the main loop acts on it (logging or HTTP inside a handler could
        # re-enter buffered I/O).
        self.stop_signal = signum

    def run(self) -> int:
        self._wake_on_signals()
        try:
            self._subscribe(meeting_channel(self.cfg.meeting_id), session_channel(self.cfg.connection_id))
            while True:
                self._tick()
        except BotExit as done:
            log.info("exiting with code %d", done.code)
            return done.code
        finally:
            self.pubsub.close()

    # --- the loop -----------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.stop_signal is not None:
            self._on_stop_signal()
        message = self._next_message()
        if message is not None:
            self._on_message(message)
        now = time.monotonic()
        if self.pending and now >= self.next_step_at:
            self._step()
        if self.active_since is not None:
            self._active_faults(now)

    def _wake_on_signals(self) -> None:
        """Signals write to a socket the loop waits on (Python re-enters an interrupted wait)."""
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals are seen at the next poll
            reader.close()
            writer.close()
            return
        self._wakeup, self._wakeup_writer = reader, writer

    def _wait_seconds(self) -> float:
        """Until the next thing the loop must do by itself (a step of the way in, a fault)."""
        if self._wakeup is None:
            return POLL_SECONDS
        now = time.monotonic()
        due = [now + IDLE_WAKE_SECONDS]
        if self.pending:
            due.append(self.next_step_at)
        if self.active_since is not None:
            if self.cfg.has("die_active"):
                due.append(self.active_since + self.cfg.die_after_seconds)
            if self.cfg.has("restart_new_session") and not self.restarted:
                due.append(self.active_since + self.cfg.restart_after_seconds)
        return max(0.0, min(due) - now)

    def _wait_for_message(self, timeout: float) -> None:
        """Sleep until the pubsub socket is readable, a signal came, or `timeout`."""
        connection = self.pubsub.connection
        sock = getattr(connection, "_sock", None) if connection is not None else None
        if sock is None:
            time.sleep(min(timeout, POLL_SECONDS))
            return
        readable, _, _ = select.select([sock, self._wakeup], [], [], timeout)
        if self._wakeup in readable:
            try:
                while self._wakeup.recv(64):
                    pass
            except BlockingIOError:
                pass

    def _next_message(self) -> dict | None:
        try:
            # Messages already read into the client's buffer are not seen by select: ask first.
            message = self.pubsub.get_message(timeout=0 if self._wakeup is not None else POLL_SECONDS)
            if message is not None or self._wakeup is None or self.stop_signal is not None:
                return message
            timeout = self._wait_seconds()
            if timeout > 0:
                self._wait_for_message(timeout)
            return self.pubsub.get_message(timeout=0)
        except redis.ConnectionError as exc:
            # The pubsub reconnects and resubscribes on the next call; a bot stays in its meeting
            # through a Redis blip.
            log.warning("redis connection lost (%s); reconnecting", exc)
            time.sleep(0.5)
            return None

    def _subscribe(self, *channels: str) -> None:
        """Subscribe and wait for the server's confirmation, so a command published after our
        next callback cannot be missed."""
        self.pubsub.subscribe(*channels)
        waiting = set(channels)
        deadline = time.monotonic() + SUBSCRIBE_CONFIRM_SECONDS
        while waiting and time.monotonic() < deadline:
            try:
                message = self.pubsub.get_message(timeout=POLL_SECONDS)
            except redis.exceptions.NoPermissionError:
                # Our Redis user may listen on the channels of the session we were launched as and
                # of our meeting only: a session started since (restart_new_session) is reached
                # through the meeting's channel. Not resubscribed after a reconnect either.
                log.warning("not allowed to listen on %s; the meeting channel still reaches us", sorted(waiting))
                for channel in waiting:
                    self.pubsub.channels.pop(channel, None)
                return
            if message is None:
                continue
            if message["type"] == "subscribe":
                waiting.discard(message["channel"])
            else:
                self._on_message(message)
        if waiting:
            log.warning("no subscribe confirmation for %s yet", sorted(waiting))
        log.info("listening on %s", ", ".join(channels))

    # --- commands -----------------------------------------------------------------------------
    def _on_message(self, message: dict) -> None:
        if message["type"] != "message":
            return
        channel, data = message["channel"], message["data"]
        try:
            command = json.loads(data)
        except ValueError:
            log.warning("ignoring a non-JSON message on %s", channel)
            return
        if not isinstance(command, dict):
            log.warning("ignoring a non-object message on %s", channel)
            return
        # The manager publishes each command on the meeting channel and the session channel;
        # handle it once.
        command_id = command.get("command_id")
        if command_id:
            if command_id in self.seen_command_ids:
                return
            self.seen_command_ids.add(command_id)
        log.info("command on %s: %s", channel, data)
        self._record(data)
        action = command.get("action")
        if action == "leave":
            self._leave("leave command")
        elif action == "reconfigure":
            self._reconfigure(command)
        else:
            log.warning("unknown command action %r ignored", action)

    def _record(self, data: str) -> None:
        key = received_list(self.cfg.meeting_id)
        try:
            self.redis.pipeline().rpush(key, data).expire(key, RECEIVED_TTL_SECONDS).execute()
        except redis.RedisError as exc:
            log.warning("could not record the command in %s: %s", key, exc)

    def _reconfigure(self, command: dict) -> None:
        if command.get("language") is not None:
            self.cfg.language = command["language"]
        if command.get("task") is not None:
            self.cfg.task = command["task"]
        log.info("reconfigured: language=%s task=%s", self.cfg.language, self.cfg.task)

    def _leave(self, why: str) -> None:
        if self.cfg.has("ignore_leave"):
            log.warning("ignoring %s (ignore_leave)", why)
            return
        log.info("leaving: %s", why)
        self._exit_cooperatively()

    def _on_stop_signal(self) -> None:
        name = signal.Signals(self.stop_signal).name
        self.stop_signal = None
        self._leave(name)

    def _exit_cooperatively(self) -> None:
        if self.cfg.has("no_exit_callback"):
            log.warning("exiting without the exited callback (no_exit_callback)")
            raise BotExit(0)
        self.callbacks.send("exited", {"connection_id": self.cfg.connection_id, "exit_code": 0,
                                       "reason": "self_initiated_leave", "completion_reason": "stopped"})
        raise BotExit(0)

    # --- the way in ---------------------------------------------------------------------------
    def _step(self) -> None:
        name = self.pending.popleft()
        if name == FAIL_JOINING:
            self._fail_joining()
        token = self.cfg.token if self.register_session else None
        answer = self.callbacks.send(name, {"connection_id": self.cfg.connection_id,
                                            "container_id": self.cfg.container_name}, bearer_token=token)
        if answer is not None:
            self.register_session = False
        if name == "started":
            self.active_since = time.monotonic()
            log.info("active in the meeting")
        self.next_step_at = time.monotonic() + self.cfg.step_seconds
        if answer and answer.get("leave"):
            self._leave("leave: true in the callback answer")

    def _fail_joining(self) -> None:
        log.error("failing to join (fail_joining)")
        self.callbacks.send("exited", {"connection_id": self.cfg.connection_id, "exit_code": 1,
                                       "reason": "join_failed", "failure_stage": "joining",
                                       "error_details": "simulated join failure (fail_joining)"})
        raise BotExit(1)

    # --- faults once active -------------------------------------------------------------------
    def _active_faults(self, now: float) -> None:
        active_for = now - self.active_since
        if self.cfg.has("die_active") and active_for >= self.cfg.die_after_seconds:
            log.error("dying silently (die_active)")
            raise BotExit(3)
        if self.cfg.has("restart_new_session") and not self.restarted \
                and active_for >= self.cfg.restart_after_seconds:
            self._restart()

    def _restart(self) -> None:
        old, new = self.cfg.connection_id, str(uuid.uuid4())
        log.warning("restarting as a new session %s (restart_new_session)", new)
        self.pubsub.unsubscribe(session_channel(old))
        self.cfg.connection_id = new
        self._subscribe(session_channel(new))
        self.restarted = True
        self.active_since = None
        self.register_session = True
        self.pending = deque(["joining", "started"])
        self.next_step_at = time.monotonic()
