"""What the wire-level fakes of engine APIs (nomad_fake, kubernetes_fake) share: a threaded HTTP/1.1
server on a free local port that hands every request to the fake's `_handle(handler, method)`."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WireFake:
    METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")
    _server: ThreadingHTTPServer | None = None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def _serve(self, name: str) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: with Nagle's algorithm each answer waits for the
            # client's delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                return  # keep test output clean; the fakes record their requests

        for method in self.METHODS:
            setattr(Handler, f"do_{method}", lambda handler, method=method: fake._handle(handler, method))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for the next poll, which is 0.5 s by default.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=name,
                         daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
