"""A tiny real HTTP server standing in for the bot manager's callback endpoints.

It records every POST (callback name, JSON body, headers) and answers from a per-callback script
of (status, body) pairs, falling back to 200 `{"status": "processed"}`.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CALLBACK_PREFIX = "/bots/internal/callback/"
DEFAULT_ANSWER = (200, {"status": "processed"})


@dataclass
class Call:
    name: str
    path: str
    body: dict
    headers: dict


class CallbackReceiver:
    def __init__(self):
        self.calls: list[Call] = []
        self.scripts: dict[str, list[tuple[int, dict]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                name = self.path.removeprefix(CALLBACK_PREFIX) if self.path.startswith(CALLBACK_PREFIX) else ""
                status, answer = receiver._record(Call(name, self.path, body, dict(self.headers)))
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format, *args):  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps shutdown() (once per test) from costing half a second.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def exited_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{CALLBACK_PREFIX}exited"

    def script(self, name: str, *answers: tuple[int, dict]) -> None:
        """The next answers to callback `name`, in order (then the default answer)."""
        with self._lock:
            self.scripts.setdefault(name, []).extend(answers)

    def _record(self, call: Call) -> tuple[int, dict]:
        with self._lock:
            self.calls.append(call)
            queued = self.scripts.get(call.name)
            return queued.pop(0) if queued else DEFAULT_ANSWER

    def names(self) -> list[str]:
        with self._lock:
            return [c.name for c in self.calls]

    def of(self, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.name == name]

    def wait_calls(self, name: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """The calls of callback `name` once there are at least `count`."""
        from tests.waiting import wait_for

        try:
            return wait_for(lambda: calls if len(calls := self.of(name)) >= count else None, timeout=timeout,
                            interval=0.02, what=f"{count} {name!r} callback(s)")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; the callbacks received: {self.names()}") from None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
