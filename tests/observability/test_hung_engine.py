"""A hung Docker engine never holds the web: under real gunicorn (2 sync workers, the worst case:
a request holds its whole worker), with DOCKER_HOST pointing at a socket that accepts connections
and never answers and the engine calls' own timeout at 30 s, concurrent `GET /bots/status` and
`/readyz` answer 503 JSON within ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS / READYZ_TIMEOUT_SECONDS
(one listing in flight per process, the outage remembered), while `/healthz`, a bot callback and
`PUT .../config` (which never asks the engine) keep answering."""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from meetings.lifecycle.statuses import MeetingStatus
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.observability.test_gunicorn import gunicorn_factory  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)
WAIT = 1.0  # ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS and READYZ_TIMEOUT_SECONDS of the server


@pytest.fixture
def silent_engine():
    """tcp://127.0.0.1:<port> of a socket whose backlog completes connections nobody ever reads."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_a_hung_engine_answers_503_quickly_and_holds_no_worker(gunicorn_factory, silent_engine):  # noqa: F811
    user = make_user(max_concurrent_bots=0)
    key = make_token(user)
    active = make_meeting(user, status=MeetingStatus.ACTIVE, native_meeting_id="abc-defg-hij")
    joining = make_session(make_meeting(user, native_meeting_id="abc-defg-xyz"))
    server = gunicorn_factory(
        workers=2, WEB_WORKER_CLASS="sync", ORCHESTRATOR="docker", DOCKER_HOST=silent_engine,
        ORCHESTRATOR_QUERY_TIMEOUT_SECONDS="30", ORCHESTRATOR_TIMEOUT_SECONDS="30",
        ORCHESTRATOR_REQUEST_TIMEOUT_SECONDS=str(WAIT), READYZ_TIMEOUT_SECONDS=str(WAIT))
    headers = {"X-API-Key": key, "Connection": "close"}

    def timed(method: str, path: str, **kwargs) -> tuple[int, dict, float]:
        started = time.monotonic()
        response = requests.request(method, server.url + path, timeout=60, **kwargs)
        return response.status_code, response.json(), time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        probes = [pool.submit(timed, "GET", "/bots/status", headers=headers) for _ in range(8)]
        probes += [pool.submit(timed, "GET", "/readyz", headers={"Connection": "close"}) for _ in range(4)]
        time.sleep(0.2)  # the probes hold (or queue behind) both workers now
        health = pool.submit(timed, "GET", "/healthz", headers={"Connection": "close"})
        callback = pool.submit(timed, "POST", "/bots/internal/callback/joining",
                               json={"connection_id": str(joining.session_uid)}, headers={"Connection": "close"})
        config = pool.submit(timed, "PUT", "/bots/google_meet/abc-defg-hij/config", json={"language": "de"},
                             headers=headers)
        results = [p.result() for p in probes]
        health, callback, config = health.result(), callback.result(), config.result()
    took = time.monotonic() - started

    print(f"\nhung engine: 8 GET /bots/status + 4 /readyz answered 503 in {max(r[2] for r in results):.2f} s "
          f"(slowest); /healthz {health[2]:.2f} s, callback {callback[2]:.2f} s, PUT config {config[2]:.2f} s")
    for code, body, seconds in results:
        assert code == 503, body
        assert seconds < 2 * WAIT + 1.5, seconds  # one wait per worker process at most, then remembered
    status_bodies = [r[1] for r in results[:8]]
    # A short cause for the tenant; the engine's address stays in the operator's log.
    assert all("bot backend is unavailable" in b["detail"] for b in status_bodies), status_bodies
    assert not any(silent_engine.split("//")[1] in b["detail"] for b in status_bodies), status_bodies
    assert all(b["failed"] == ["backend"] for _, b, _ in results[8:]), results[8:]
    assert health[0] == 200 and health[2] < 2 * WAIT + 1.5, health
    assert callback[0] == 200 and callback[2] < 2 * WAIT + 1.5, callback
    assert config[0] == 202 and config[2] < 2 * WAIT + 1.5, config
    assert took < 10, took  # nothing waited for the engine's own 30 s timeout
    active.refresh_from_db()
    assert active.data["language"] == "de"
