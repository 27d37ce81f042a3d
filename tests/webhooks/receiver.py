"""A real HTTP receiver for webhook tests: stdlib http.server in a thread on 127.0.0.1.

It records every request and answers from a script (a queue of answers, then a default). It can
go down (the port stops listening: connections are refused) and come back on the same port.
"""
from __future__ import annotations

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
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Received(self.path, self.headers, body, time.monotonic()))
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def down(self) -> None:
        """Stop listening: connections to the port are refused until `up()`."""
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

    def wait_for(self, count: int, timeout: float = 20, path: str = "/hook") -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.posts(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(self.posts(path))} requests, expected {count}")
            time.sleep(0.05)
        return self.posts(path)
