"""A storm: many bots that ignore leave and SIGTERM stopped at once, one user whose webhook
receiver accepts connections and never answers, and a probe user requesting a bot every second,
through the whole system as `make run` runs it (gunicorn, the four Celery workers with their
default pools, beat, the process backend and simbot) on real PostgreSQL and Redis.

What it reports, against the isolation bounds of docs/lifecycle.md (delay 3 s, grace 2 s, stop timeout
10 s, sweep every 3 s):
- stop -> terminal of every stubborn meeting (end_time - stop_requested_at): <= delay + grace + 1 s;
- probe POST -> active during the storm: <= the quiet baseline (measured first) + 1 s;
- the time until every stubborn bot process is gone, from the last stop: <= delay + stop timeout + 2 s;
- sweep runs: one per interval, none skipped or expired.

    python -m bench.storm [--stubborn 200] [--hook-bots 15] [--backend process|docker]

`run_storm()` is also what tests/isolation runs at CI scale, with the bounds asserted.
"""
from __future__ import annotations

import argparse
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
import requests.adapters
from urllib3.util.retry import Retry

DELAY, GRACE, STOP_TIMEOUT, SWEEP = 3.0, 2.0, 10.0, 3.0
TERMINAL = {"completed", "failed"}


def knobs(stop_timeout: float = STOP_TIMEOUT) -> dict[str, str]:
    return {"BOT_STOP_DELAY_SECONDS": str(DELAY), "BOT_STOP_GRACE_SECONDS": str(GRACE),
            "BOT_STOP_TIMEOUT_SECONDS": str(stop_timeout), "ORPHAN_SWEEP_INTERVAL_SECONDS": str(SWEEP),
            "ORPHAN_GRACE_SECONDS": "10", "REQUESTED_TIMEOUT_SECONDS": "60",
            "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true", "SIMBOT_STEP_SECONDS": "0.1"}


class HangingReceiver:
    """A webhook endpoint that accepts every connection and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # never read, never answered

    def close(self) -> None:
        self._stopping = True
        self.sock.close()
        for conn in self.held:
            conn.close()


@dataclass
class StormFigures:
    stubborn: int
    stop_to_terminal: list[float] = field(default_factory=list)
    not_terminal: list[int] = field(default_factory=list)
    probe_baseline: float = 0.0
    probes: list[float] = field(default_factory=list)
    probes_not_active: int = 0
    probe_worst_phases: dict[str, float] = field(default_factory=dict)
    probe_baseline_phases: dict[str, float] = field(default_factory=dict)
    probe_timeline: list[tuple[float, float | None]] = field(default_factory=list)
    hook_bots_to_active: list[float] = field(default_factory=list)
    bots_gone_after: float | None = None
    sweeps_completed: int = 0
    sweeps_skipped: int = 0
    sweeps_expected: int = 0
    lateness_p99: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict:
        from bench.common import percentile

        def pct(values, p):
            return round(percentile(values, p), 2) if values else None

        return {
            "stubborn_bots": self.stubborn, "not_terminal": len(self.not_terminal),
            "stop_to_terminal_worst_s": round(max(self.stop_to_terminal), 2) if self.stop_to_terminal else None,
            "stop_to_terminal_p99_s": pct(self.stop_to_terminal, 99),
            "bound_delay_plus_grace_plus_1_s": DELAY + GRACE + 1,
            "probe_baseline_s": round(self.probe_baseline, 2),
            "probe_worst_s": round(max(self.probes), 2) if self.probes else None,
            "probes": len(self.probes), "probes_not_active": self.probes_not_active,
            "probe_baseline_phases_s": self.probe_baseline_phases,
            "probe_worst_phases_s": self.probe_worst_phases,
            "probes_sent_at_s_and_took_s": self.probe_timeline,
            "hook_user_bots_worst_to_active_s": round(max(self.hook_bots_to_active), 2)
            if self.hook_bots_to_active else None,
            "bots_gone_after_last_stop_s": None if self.bots_gone_after is None else round(self.bots_gone_after, 2),
            "sweeps_completed": self.sweeps_completed, "sweeps_skipped": self.sweeps_skipped,
            "sweeps_expected": self.sweeps_expected,
            "task_lateness_p99": self.lateness_p99,
        }


class Client:
    def __init__(self, url: str, email: str):
        from accounts.services import get_or_create_user, issue_token

        user, _ = get_or_create_user(email, name=email.split("@")[0])
        user.max_concurrent_bots = 0
        user.save(update_fields=["max_concurrent_bots"])
        self.url = url
        self.http = requests.Session()
        # Kept-alive connections the server closed while idle are retried (GET, DELETE, PUT: idempotent),
        # also when the close is only seen as a reset after the request was sent.
        self.http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64, max_retries=Retry(
            total=3, connect=3, read=2, backoff_factor=0.05, allowed_methods={"GET", "DELETE", "PUT"})))
        self.http.headers["X-API-Key"] = issue_token(user).token
        self.count = 0
        self.lock = threading.Lock()

    def native_id(self, series: int) -> str:
        from bench.common import meet_id

        with self.lock:
            self.count += 1
            return meet_id(self.count, series)

    def request_bot(self, native_id: str, bot_name: str) -> int:
        response = self.http.post(f"{self.url}/bots", json={"platform": "google_meet", "native_meeting_id": native_id,
                                                           "bot_name": bot_name}, timeout=30)
        if response.status_code != 201:
            raise RuntimeError(f"POST /bots answered {response.status_code}: {response.text[:300]}")
        return response.json()["id"]

    def status(self, meeting_id: int) -> str:
        return self.http.get(f"{self.url}/meetings/{meeting_id}", timeout=30).json()["status"]

    def wait(self, meeting_id: int, wanted: set[str], timeout: float, interval: float = 0.05) -> tuple[str, float]:
        """The status once it is one of `wanted` (or at the timeout), and when (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(meeting_id)
            if status in wanted or time.monotonic() > deadline:
                return status, time.monotonic()
            time.sleep(interval)

    def stop(self, native_id: str) -> None:
        response = self.http.delete(f"{self.url}/bots/google_meet/{native_id}", timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"DELETE answered {response.status_code}: {response.text[:300]}")

    def time_to_active(self, series: int, timeout: float = 60) -> tuple[str, float | None, int]:
        """POST -> active of a new bot: from sending the POST to the commit of its `active`
        transition (the database's clock is this host's). Polled slowly only to know when it is
        done: the measuring client must not be a load of its own on the web it measures."""
        native = self.native_id(series)
        sent_at = time.time()
        meeting_id = self.request_bot(native, "Probe")
        self.wait(meeting_id, {"active"} | TERMINAL, timeout, interval=0.25)
        return native, _active_after(meeting_id, sent_at), meeting_id


def _active_after(meeting_id: int, since: float) -> float | None:
    """Seconds from `since` (unix time) to the meeting's `active` transition; None if it has none."""
    from meetings.models import MeetingTransition

    at = MeetingTransition.objects.filter(meeting_id=meeting_id, to_status="active", applied=True) \
        .values_list("created_at", flat=True).first()
    return None if at is None else at.timestamp() - since


def _phases(meeting_id: int) -> dict[str, float]:
    """Where a bot's way to `active` went: request -> launched (its session recorded by the launch
    task) -> joining (the bot's first callback) -> active, in seconds, from the database."""
    from meetings.models import MeetingSession, MeetingTransition

    at = dict(MeetingTransition.objects.filter(meeting_id=meeting_id, applied=True)
              .values_list("to_status", "created_at"))
    session = MeetingSession.objects.filter(meeting_id=meeting_id).order_by("started_at").first()
    marks = [("requested", at.get("requested")), ("launched", session and session.started_at),
             ("joining", at.get("joining")), ("active", at.get("active"))]
    return {f"{a}->{b}": round((tb - ta).total_seconds(), 2)
            for (a, ta), (b, tb) in zip(marks, marks[1:]) if ta and tb}


def _lateness_p99(url: str) -> dict[str, str]:
    """Per timed task, the histogram bucket under which 99 % of its starts fell (how late the
    finalizers, kills and sweeps ran against their due time)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=30).text
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "botmanager_task_lateness_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.setdefault(sample.labels["task"], []).append((float(sample.labels["le"]), sample.value))
    result = {}
    for task, rows in buckets.items():
        rows.sort()
        total = rows[-1][1]
        if total:
            bound = next(le for le, n in rows if n >= 0.99 * total)
            result[task.split(".")[-1]] = f"<= {bound:g} s ({int(total)} runs)"
    return result


def _sweep_runs(url: str) -> dict[str, int]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    runs = {}
    for line in text.splitlines():
        if line.startswith("botmanager_sweep_runs_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            runs[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return runs


def _running(backend, containers: set[str]) -> set[str]:
    return {b.container_id for b in backend.list() if b.container_id in containers and b.status.is_running}


def _wait_gone(backend, containers: set[str], timeout: float) -> float | None:
    """Unix time at which none of `containers` runs any more (None: some still ran at the timeout)."""
    deadline = time.monotonic() + timeout
    while _running(backend, containers):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return time.time()


def run_storm(url: str, backend, *, stubborn: int, hook_bots: int, stop_timeout: float = STOP_TIMEOUT,
              log=print) -> StormFigures:
    """Run the storm against the stack at `url` (its settings: `knobs(stop_timeout)`); `backend`
    is an orchestrator instance that sees the stack's bots."""
    from meetings.models import Meeting

    figures = StormFigures(stubborn=stubborn)
    storm, hooked, probe = (Client(url, f"{who}-{time.time_ns()}@storm.example.com")
                            for who in ("storm", "hooked", "probe"))
    receiver = HangingReceiver()
    try:
        assert hooked.http.put(f"{url}/user/webhook", json={"webhook_url": receiver.url},
                               timeout=30).status_code == 200
        # The quiet baseline: a probe bot's POST -> active with nothing else going on.
        baseline = []
        for _ in range(2):
            native, took, meeting_id = probe.time_to_active(series=1)
            baseline.append((took or 60.0, meeting_id))
            probe.stop(native)
        figures.probe_baseline, fastest = min(baseline)
        figures.probe_baseline_phases = _phases(fastest)
        log(f"  probe baseline POST -> active: {figures.probe_baseline:.2f} s")

        with ThreadPoolExecutor(32) as pool:
            natives = [storm.native_id(series=2) for _ in range(stubborn)]
            ids = list(pool.map(lambda n: storm.request_bot(n, "simbot:ignore_leave"), natives))
            statuses = [s for s, _at in pool.map(lambda i: storm.wait(i, {"active"} | TERMINAL, 180), ids)]
        not_active = [i for i, s in zip(ids, statuses) if s != "active"]
        if not_active:
            raise RuntimeError(f"{len(not_active)} stubborn bots never became active: {not_active[:10]}")
        containers = set(Meeting.objects.filter(pk__in=ids).values_list("bot_container_id", flat=True))
        log(f"  {stubborn} stubborn bots active")

        # The hanging receiver's user starts bots too: each transition is a delivery that hangs (4
        # attempts in flight, WEBHOOK_TIMEOUT_SECONDS each, the rest held by the cap: minutes of
        # them). Their own way to `active` is measured here, before the stops: during the storm it
        # would measure their bots' start-up, not the isolation from their receiver.
        hook_started = time.time()
        hook_ids = [hooked.request_bot(hooked.native_id(series=3), "Hooked") for _ in range(hook_bots)]
        for meeting_id in hook_ids:
            hooked.wait(meeting_id, {"active"} | TERMINAL, 60, interval=0.25)
            took = _active_after(meeting_id, hook_started)
            if took is not None:
                figures.hook_bots_to_active.append(took)
        log(f"  {len(figures.hook_bots_to_active)} of {hook_bots} bots of the hanging receiver's user active")
        watchers = ThreadPoolExecutor(2)
        sweeps_before = _sweep_runs(url)
        storm_started = time.monotonic()
        gone = watchers.submit(_wait_gone, backend, containers, 180)
        # A probe bot every second while the storm lasts, from its first second on.
        storm_window = DELAY + max(GRACE, stop_timeout) + 2
        probing = ThreadPoolExecutor(8)
        probe_futures = []

        def probe_every_second():
            while time.monotonic() - storm_started < storm_window:
                probe_futures.append((round(time.monotonic() - storm_started, 1),
                                      probing.submit(probe.time_to_active, 4, 60)))
                time.sleep(1.0)

        prober = watchers.submit(probe_every_second)
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(storm.stop, natives))
        stops_took = time.monotonic() - storm_started
        log(f"  {stubborn} stops sent in {stops_took:.2f} s")
        prober.result()
        probe_natives, worst_probe = [], (0.0, None)
        for sent_at, future in probe_futures:
            native, took, meeting_id = future.result()
            figures.probe_timeline.append((sent_at, None if took is None else round(took, 2)))
            probe_natives.append(native)
            if took is None:
                figures.probes_not_active += 1
            else:
                figures.probes.append(took)
                worst_probe = max(worst_probe, (took, meeting_id), key=lambda pair: pair[0])
        if worst_probe[1] is not None:
            figures.probe_worst_phases = _phases(worst_probe[1])
        probing.shutdown()

        # Every stubborn meeting terminal, and when; every stubborn bot gone, and when.
        deadline = time.monotonic() + 120
        while Meeting.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).exists() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        gone_at = gone.result()
        watchers.shutdown()
        rows = list(Meeting.objects.filter(pk__in=ids).values_list("id", "status", "stop_requested_at", "end_time"))
        figures.not_terminal = [i for i, status, _s, _e in rows if status not in TERMINAL]
        figures.stop_to_terminal = [(end - stop).total_seconds() for _i, status, stop, end in rows
                                    if status in TERMINAL and stop and end]
        last_stop = max(stop for _i, _s, stop, _e in rows if stop)
        if gone_at is not None:
            figures.bots_gone_after = gone_at - last_stop.timestamp()
        sweeps_after = _sweep_runs(url)
        elapsed = time.monotonic() - storm_started
        figures.sweeps_completed = sweeps_after.get("completed", 0) - sweeps_before.get("completed", 0)
        figures.sweeps_skipped = sweeps_after.get("skipped", 0) - sweeps_before.get("skipped", 0)
        figures.sweeps_expected = int(elapsed // SWEEP)
        figures.lateness_p99 = _lateness_p99(url)
        for native in probe_natives:
            probe.stop(native)
        for meeting_id in hook_ids:
            hooked.http.delete(f"{url}/bots/google_meet/{Meeting.objects.get(pk=meeting_id).native_meeting_id}",
                               timeout=30)
    finally:
        receiver.close()
    return figures


def main(argv: list[str] | None = None) -> dict:
    from bench import common

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubborn", type=int, default=None, help="default: 200 (process), 50 (docker)")
    parser.add_argument("--hook-bots", type=int, default=15)
    parser.add_argument("--backend", choices=["process", "docker"], default="process")
    args = parser.parse_args(argv)
    env = common.setup()
    if args.backend == "docker":
        # The registry-free test bot (docker/bot-test-image, scripts/ci-docker.sh builds it): it
        # speaks the callbacks and ignores SIGTERM when its botName asks for ignore_leave. On the
        # host network it reaches the stack's 127.0.0.1 ports.
        from orchestrators.docker import DockerOrchestrator

        extra = {"ORCHESTRATOR": "docker", "DEPLOYMENT_NAME": "storm", "BOT_IMAGE": "botmanager-test-bot:latest",
                 "DOCKER_NETWORK": "host"}
        backend = DockerOrchestrator(image=extra["BOT_IMAGE"], deployment="storm", network="host")
        stubborn = args.stubborn or 50
    else:
        from orchestrators.process import ProcessOrchestrator

        extra = {"ORCHESTRATOR": "process", "DEPLOYMENT_NAME": "storm"}
        backend = ProcessOrchestrator(env["RUN_DIR"], "storm")
        stubborn = args.stubborn or 200
    try:
        with common.stack({**env, **extra}, extra_env=knobs()) as web:
            result = run_storm(web.url, backend, stubborn=stubborn, hook_bots=args.hook_bots)
    finally:
        for bot in backend.list():
            if bot.status.is_running:
                backend.kill(bot.container_id)
        if args.backend == "docker":
            for bot in backend.list():
                backend.remove(bot.container_id)
    figures = result.summary()
    common.print_table(f"storm ({args.backend} backend): stubborn bots stopped at once, a hanging webhook, "
                       "a probe user", [(key, value) for key, value in figures.items()])
    common.save(f"storm-{args.backend}", figures)
    return figures


if __name__ == "__main__":
    main()
