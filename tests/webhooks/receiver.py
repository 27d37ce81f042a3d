"""A real HTTP receiver for webhook tests: stdlib http.server in a thread on 127.0.0.1.

It records every request and answers from a script (a queue of answers, then a default). It can
go down (the port stops listening: connections are refused) and come back on the same port.
"""
from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    hang: bool = False  # accept the request and never answer (until `release()`, then hang up)


@dataclass(frozen=True)
class Received:
    path: str
    headers: Message  # case-insensitive, as receivers' frameworks give them
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["X-Webhook-Id"]


class Receiver:
    def __init__(self):
        self.requests: list[Received] = []
        self.script: list[Answer] = []
        self.default = Answer()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0
        self._held: set = set()  # handlers of `hang` answers whose client may have given up
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self
        self._released.clear()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                self.counted = True
                with receiver._lock:
                    receiver.requests.append(Received(self.path, self.headers, body, time.monotonic()))
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                    # A held request whose client already hung up is no longer in flight, even if
                    # its handler has not polled yet: the sender closes its connection before its
                    # slot goes to the next attempt, so this is exact at the next request's arrival.
                    for held in [h for h in receiver._held if h._client_gone()]:
                        held.uncount()
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                try:
                    self.answer_with(answer)
                finally:
                    with receiver._lock:
                        self.uncount()

            def uncount(self):  # under receiver._lock
                receiver._held.discard(self)
                if self.counted:
                    self.counted = False
                    receiver.in_flight -= 1

            def answer_with(self, answer: Answer):
                if answer.hang:
                    # Held until released or until the client gives up (closes): `in_flight`
                    # counts the attempts actually waiting on this receiver.
                    with receiver._lock:
                        receiver._held.add(self)
                    deadline = time.monotonic() + 120
                    while not receiver._released.wait(0.02) and time.monotonic() < deadline:
                        if self._client_gone():
                            break
                    self.close_connection = True
                    return
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def _client_gone(self) -> bool:
                readable, _, _ = select.select([self.connection], [], [], 0)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def release(self) -> None:
        """Hang up the requests held by `hang` answers (and any later one)."""
        self._released.set()

    def down(self) -> None:
        """Stop listening: connections to the port are refused until `up()`."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, *answers: Answer | int) -> None:
        with self._lock:
            self.script.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def posts(self, path: str = "/hook") -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_posts(self, count: int, timeout: float = 20, path: str = "/hook") -> list[Received]:
        """The requests to `path` once there are at least `count`."""
        from tests.waiting import wait_for

        return wait_for(lambda: posts if len(posts := self.posts(path)) >= count else None, timeout=timeout,
                        what=f"{count} requests to {path}")


class Blackhole:
    """A port that never completes a TCP connection: a listening socket whose accept queue is
    full and never drained, so the kernel drops further SYNs (like a firewalled host)."""

    def __init__(self):
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(0)
        self.port = self._server.getsockname()[1]
        self._fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(filler)
        time.sleep(0.1)  # the queue fills

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        for s in [*self._fillers, self._server]:
            s.close()
