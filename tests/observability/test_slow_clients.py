"""Slow clients cannot starve the web: gunicorn as `make run` and the compose
file start it (botmanager/gunicorn_conf.py, WEB_CONCURRENCY workers), 50 clients trickling request
bodies a byte at a time, and a bot callback and /healthz still answer within 1 s each.

Under the old configuration (2 sync workers) three such clients stopped every request for 20 s."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from django.conf import settings

from tests.factories import make_meeting, make_session, make_user
from tests.observability.test_gunicorn import gunicorn_factory  # noqa: F401 (fixture)

SLOW_CLIENTS = 50


class Tricklers:
    """Sockets that announce a large body and send it one byte every half second."""

    def __init__(self, port: int, count: int):
        self.stop = threading.Event()
        self.sockets = []
        head = (f"POST /bots/internal/callback/joining HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(head + b"{")
            self.sockets.append(sock)
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(0.5):
            for sock in self.sockets:
                try:
                    sock.send(b" ")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def _timed(call) -> tuple[float, int]:
    started = time.monotonic()
    status = call().status_code
    return time.monotonic() - started, status


@pytest.mark.django_db(transaction=True)
def test_fifty_trickling_clients_leave_callbacks_and_healthz_answering_within_a_second(gunicorn_factory):  # noqa: F811
    meeting = make_meeting(make_user())
    uid = str(make_session(meeting).session_uid)
    server = gunicorn_factory(workers=settings.WEB_CONCURRENCY)
    # Warm both workers' code paths first: the bound below is about waiting, not first imports.
    for _ in range(4):
        requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=10)

    slow = Tricklers(server.port, SLOW_CLIENTS)
    try:
        time.sleep(2)  # the slow requests are all in the server by now
        callback = _timed(lambda: requests.post(server.url + "/bots/internal/callback/joining",
                                                json={"connection_id": uid}, timeout=10,
                                                headers={"Connection": "close"}))
        healthz = [_timed(lambda: requests.get(server.url + "/healthz", timeout=10, headers={"Connection": "close"}))
                   for _ in range(5)]
    finally:
        slow.close()

    assert callback[1] == 200 and callback[0] < 1.0, callback
    assert all(status == 200 and seconds < 1.0 for seconds, status in healthz), healthz
