"""Isolation under load (bench.storm at CI scale): stubborn bots stopped at once, a user whose
webhook receiver never answers, and a probe user requesting a bot every second, through the whole
system with its real worker layout (gunicorn, the lifecycle / orchestrator / webhooks / sweep
workers, beat), the process backend and simbot.

The bounds are correctness bounds (no meeting past its deadline, no launch held by someone else's
slow work), with a margin for a busy 2-core CI machine; `python -m bench.storm` reports the
figures at full scale."""
from __future__ import annotations

import pytest

from bench import common, storm
from orchestrators.process import ProcessOrchestrator
from tests.support import close_other_connections, stack_env

pytestmark = pytest.mark.django_db(transaction=True)

STUBBORN = 30
STOP_TIMEOUT = 4.0
MARGIN = 3.0  # queueing and process start-up on a busy 2-core machine; the bounds are seconds apart


@pytest.fixture(scope="module")
def figures(tmp_path_factory, django_db_setup, django_db_blocker):
    run_dir = tmp_path_factory.mktemp("storm")
    backend = ProcessOrchestrator(run_dir, "storm-test")
    env = stack_env(run_dir, ORCHESTRATOR="process", DEPLOYMENT_NAME="storm-test")
    with django_db_blocker.unblock():
        try:
            with common.stack(env, extra_env=storm.knobs(STOP_TIMEOUT)) as web:
                result = storm.run_storm(web.url, backend, stubborn=STUBBORN, hook_bots=5,
                                         stop_timeout=STOP_TIMEOUT)
        finally:
            for bot in backend.list():
                if bot.status.is_running:
                    backend.kill(bot.container_id)
            close_other_connections()
    print("\nstorm at CI scale:", result.summary())
    return result


def test_every_stubborn_meeting_ends_within_delay_plus_grace(figures):
    assert figures.not_terminal == []
    assert len(figures.stop_to_terminal) == STUBBORN
    assert max(figures.stop_to_terminal) <= storm.DELAY + storm.GRACE + 1 + MARGIN, figures.summary()


def test_another_users_launches_are_not_delayed_by_the_storm(figures):
    assert figures.probes and figures.probes_not_active == 0, figures.summary()
    assert max(figures.probes) <= figures.probe_baseline + 1 + MARGIN, figures.summary()


def test_the_user_with_a_hanging_webhook_receiver_still_gets_its_bots(figures):
    assert len(figures.hook_bots_to_active) == 5, figures.summary()


def test_every_stubborn_bot_is_gone_within_delay_plus_stop_timeout(figures):
    assert figures.bots_gone_after is not None, figures.summary()
    assert figures.bots_gone_after <= storm.DELAY + STOP_TIMEOUT + 2 + MARGIN, figures.summary()


def test_the_sweep_runs_on_schedule_through_the_storm(figures):
    assert figures.sweeps_skipped == 0, figures.summary()
    assert figures.sweeps_completed >= figures.sweeps_expected - 1, figures.summary()
