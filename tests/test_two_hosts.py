"""Scale-out: two complete stacks ("hosts": gunicorn, the four workers and beat each, the local
process backend in a run directory of their own, so two backend instances) share one PostgreSQL
and one Redis. Bots are requested through both. A sweep judges only what it listed: nothing alive
is ever failed; a stop through host A ends a bot running on host B; a bot that dies on host B is
detected (by B's sweep); and when host B is gone entirely, its meetings wait for the explicit
lost-instance policy instead of being judged by A."""
from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack

import pytest
import requests

from bench import common
from meetings.models import Meeting
from meetings.stopping import instances
from orchestrators.process import ProcessOrchestrator
from tests.factories import make_token, make_user
from tests.support import close_other_connections, stack_env
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

DELAY, GRACE, STOP_TIMEOUT, SWEEP, ORPHAN_GRACE, UNSEEN = 2.0, 2.0, 2.0, 2.0, 2.0, 8.0
KNOBS = {"BOT_STOP_DELAY_SECONDS": str(DELAY), "BOT_STOP_GRACE_SECONDS": str(GRACE),
         "BOT_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT), "ORPHAN_SWEEP_INTERVAL_SECONDS": str(SWEEP),
         "ORPHAN_GRACE_SECONDS": str(ORPHAN_GRACE), "INSTANCE_UNSEEN_SECONDS": str(UNSEEN),
         "SIMBOT_STEP_SECONDS": "0.1", "ORCHESTRATOR": "process", "DEPLOYMENT_NAME": "two-hosts"}
MARGIN = 8.0  # process start-up and scheduling on a busy 2-core machine


class Host:
    def __init__(self, name: str, run_dir, web, api: requests.Session):
        self.name, self.web, self.api = name, web, api
        self.backend = ProcessOrchestrator(run_dir, "two-hosts")
        self.instance = self.backend.instance_id()

    def request(self, native: str, bot_name: str = "simbot") -> int:
        response = self.api.post(f"{self.web.url}/bots", json={"platform": "google_meet", "native_meeting_id": native,
                                                              "bot_name": bot_name}, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def stop(self, native: str) -> None:
        assert self.api.delete(f"{self.web.url}/bots/google_meet/{native}", timeout=10).status_code == 202

    def running(self, container_id: str) -> bool:
        info = self.backend.inspect(container_id)
        return info is not None and info.status.is_running


@pytest.fixture
def hosts(tmp_path):
    user = make_user()
    api = requests.Session()
    api.headers["X-API-Key"] = make_token(user)
    with ExitStack() as stack:
        made = []
        for name in ("a", "b"):
            run_dir = tmp_path / name
            run_dir.mkdir()
            web = stack.enter_context(common.stack(stack_env(run_dir), extra_env=KNOBS))
            made.append(Host(name, run_dir, web, api))
        try:
            yield made
        finally:
            for host in made:
                for bot in host.backend.list():
                    if bot.status.is_running:
                        host.backend.kill(bot.container_id)
    close_other_connections()


def _meet(n: int) -> str:
    return f"abc-defg-h{chr(ord('a') + n // 26)}{chr(ord('a') + n % 26)}"


def _status(meeting_id: int) -> str:
    return Meeting.objects.values_list("status", flat=True).get(pk=meeting_id)


def _launch_on_both(a, b, kinds: list[str]) -> dict[int, tuple[str, str]]:
    """Request bots of `kinds` in turn, alternately through A and B, until host B runs one of each
    kind and host A runs some (launches go to whichever host's worker takes them); returns
    {meeting id: (native id, kind)} once every one is active."""
    made: dict[int, tuple[str, str]] = {}
    n = 0
    while True:
        for _ in range(2 * len(kinds)):
            # Each kind twice in a row: launches tend to alternate between the two hosts' workers.
            native, kind = _meet(n), kinds[(n // 2) % len(kinds)]
            made[(a if n % 2 == 0 else b).request(native, kind)] = (native, kind)
            n += 1
        wait_for(lambda: all(Meeting.objects.get(pk=i).bot_instance for i in made), timeout=60,
                 what="every launch to be recorded")
        where = {(Meeting.objects.get(pk=i).bot_instance, kind) for i, (_n, kind) in made.items()}
        if all((b.instance, kind) in where for kind in kinds) and any(i == a.instance for i, _k in where):
            break
        assert n < 40, f"the launches never reached both hosts: {where}"
    for meeting_id in made:
        wait_for(lambda: _status(meeting_id) == "active", timeout=90, interval=0.2,
                 what=f"meeting {meeting_id} to be active")
    return made


def sweep_passes_past_the_grace(hosts: list[Host], meeting_ids, passes: int) -> None:
    """Wait until each host's sweep has listed its bots `passes` times since the meetings' last
    change became older than the orphan grace (before that no sweep may judge them). A sweep
    records its listing (the instance's `last_listed_at`) before it judges, so `passes` listings
    mean `passes - 1` passes judged in full."""
    from datetime import timedelta

    from django.db.models import Max

    judgeable_from = (Meeting.objects.filter(pk__in=list(meeting_ids)).aggregate(last=Max("updated_at"))["last"]
                      + timedelta(seconds=ORPHAN_GRACE))
    seen: dict[str, set] = {host.instance: set() for host in hosts}

    def enough() -> bool:
        for instance, listed_at in instances.last_listed().items():
            if instance in seen and listed_at and listed_at > judgeable_from:
                seen[instance].add(listed_at)
        return all(len(listings) >= passes for listings in seen.values())

    try:
        wait_for(enough, timeout=ORPHAN_GRACE + passes * SWEEP + MARGIN, interval=0.1,
                 what=f"{passes} sweep passes of each host past the grace")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; the listings seen: {seen}") from None


def test_two_hosts_on_one_database_judge_only_their_own_bots(hosts):
    a, b = hosts
    made = _launch_on_both(a, b, ["simbot", "simbot:ignore_leave"])
    on = {i: Meeting.objects.get(pk=i) for i in made}

    # Three sweep passes of each host that could judge them later, nothing alive has been failed.
    sweep_passes_past_the_grace([a, b], made, passes=3)
    assert {i: _status(i) for i in made} == {i: "active" for i in made}
    assert {row["instance"] for row in instances.overview()} >= {a.instance, b.instance}

    # A stop through host A ends a stubborn bot running on host B, within the stop bounds.
    target = next(i for i, m in on.items() if m.bot_instance == b.instance and made[i][1] == "simbot:ignore_leave")
    a.stop(made[target][0])
    stopped = time.monotonic()
    wait_for(lambda: _status(target) == "completed", timeout=DELAY + GRACE + MARGIN, interval=0.1,
             what="the meeting stopped through A to end")
    wait_for(lambda: not b.running(on[target].bot_container_id), timeout=DELAY + STOP_TIMEOUT + MARGIN, interval=0.1,
             what="B's bot to be killed through B's instance queue")
    print(f"\nstop through host A of a bot on host B: bot gone {time.monotonic() - stopped:.1f} s after the stop")

    # A bot that dies silently on host B is still detected, by B's sweep.
    dead = next(i for i, m in on.items() if m.bot_instance == b.instance and made[i][1] == "simbot")
    record = b.backend.inspect(on[dead].bot_container_id)
    pid = int(__import__("json").loads((b.backend.bots_dir / f"{record.container_id}.json").read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _status(dead) == "failed", timeout=ORPHAN_GRACE + 2 * SWEEP + MARGIN, interval=0.2,
             what="B's sweep to judge its dead bot")
    assert Meeting.objects.get(pk=dead).failure_stage == "active"

    others = [i for i in made if i not in (target, dead)]
    assert all(_status(i) == "active" for i in others)  # still nothing alive failed


def test_when_host_b_is_gone_its_meetings_wait_for_the_explicit_lost_instance_policy(hosts, settings):
    settings.INSTANCE_UNSEEN_SECONDS = UNSEEN  # as the stacks have it
    a, b = hosts
    made = _launch_on_both(a, b, ["simbot"])
    on_b = [i for i in made if Meeting.objects.get(pk=i).bot_instance == b.instance]
    on_a = [i for i in made if i not in on_b]

    # Host B goes away: its services and its bots.
    common.stop_all([*b.web.services, b.web])
    for bot in b.backend.list():
        b.backend.kill(bot.container_id)

    wait_for(lambda: any(r["instance"] == b.instance and r["unseen"] for r in instances.overview()),
             timeout=UNSEEN + 2 * SWEEP + MARGIN, interval=0.5, what="host B's instance to be reported unseen")
    assert all(_status(i) == "active" for i in made)  # A judged none of B's meetings
    row = next(r for r in instances.overview() if r["instance"] == b.instance)
    assert row["live_meetings"] == len(on_b)

    ended = instances.end_meetings_of(b.instance, by="the test")

    assert ended == len(on_b)
    assert {_status(i) for i in on_b} == {"failed"}
    assert all(_status(i) == "active" for i in on_a)
