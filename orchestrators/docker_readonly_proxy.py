"""A read-only Docker API proxy: what the services that only look at bots (web's `GET /bots/status`
and `/readyz`, the orphan sweep) may ask the engine, and nothing else.

Whoever holds the engine socket is root on the host, and the web faces the internet. So in compose
only `worker-orchestrator` (it starts and stops bots) and this proxy (service `docker-proxy`, on
a network of its own that bots are not on) mount the socket; web and sweep use
`DOCKER_HOST=tcp://docker-proxy:2375`. The proxy answers GET only, on the Docker API's paths with
or without their version prefix (`/v1.43/...`: the docker SDK asks the unversioned `/version` to
negotiate, then uses versioned paths):

| path | answered |
|---|---|
| `/_ping` (GET or HEAD), `/version` | as the engine answers |
| `/info` | only the engine's `ID` (DockerOrchestrator.instance_id()), none of the host's details |
| `/containers/json` | with this deployment's label filter added to the caller's (and the answer checked again) |
| `/containers/<id>/json` | for a container with this deployment's labels, without `Config.Env` (it holds BOT_CONFIG); any other container is "No such container" (404), as DockerOrchestrator.inspect() treats one |

Everything else (any other method or path: create, kill, exec, archive, images, events...) gets
403 with a JSON `message` (the field the docker SDK shows as the error's explanation).

Run: `python -m orchestrators.docker_readonly_proxy --deployment NAME [--listen 0.0.0.0:2375]
[--engine unix:///var/run/docker.sock]`. Standard library only; it imports nothing from Django.
Decision record: docs/decisions/0011-a-read-only-docker-proxy-of-our-own.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import re
import socket
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from orchestrators.base import LABEL_DEPLOYMENT, LABEL_MANAGED

log = logging.getLogger("orchestrators.docker_readonly_proxy")

_VERSION = r"(?P<version>/v\d+\.\d+)?"
# Docker's own rule for names, and hex ids: never a "/" or a leading ".", so no path escapes.
_CONTAINER = r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)"
_ROUTES = {
    "ping": re.compile(rf"^{_VERSION}/_ping$"),
    "version": re.compile(rf"^{_VERSION}/version$"),
    "info": re.compile(rf"^{_VERSION}/info$"),
    "list": re.compile(rf"^{_VERSION}/containers/json$"),
    "inspect": re.compile(rf"^{_VERSION}/containers/{_CONTAINER}/json$"),
}
# The query parameters each route passes on; any other is dropped.
_QUERY = {"list": ("all", "limit", "size", "filters"), "inspect": ("size",)}
# The engine's response headers the SDK may read; the rest stay here.
_HEADERS = ("Content-Type", "Api-Version", "Docker-Experimental", "Ostype", "Server")


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upstream:
    """The engine request a permitted request becomes."""
    kind: str
    path: str
    container: str = ""


def route(method: str, target: str, deployment: str) -> Upstream:
    """The engine request for `method target`, or Refused. Pure: the whole policy is here."""
    parts = urlsplit(target)
    if method != "GET" and not (method == "HEAD" and _ROUTES["ping"].fullmatch(parts.path)):
        raise Refused(403, f"the read-only Docker proxy refuses {method}: only GET of listings and "
                           f"inspections of this deployment's bots passes")
    for kind, pattern in _ROUTES.items():
        match = pattern.fullmatch(parts.path)
        if match:
            break
    else:
        raise Refused(403, f"the read-only Docker proxy refuses GET {parts.path}: only /_ping, /version, "
                           f"/info, /containers/json and /containers/<id>/json pass")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()
             if k in _QUERY.get(kind, ())}
    if kind == "list":
        query["filters"] = json.dumps(_forced_filters(query.get("filters"), deployment))
    path = parts.path + (f"?{urlencode(query)}" if query else "")
    return Upstream(kind, path, match.groupdict().get("id") or "")


def _forced_filters(raw: str | None, deployment: str) -> dict:
    """The caller's filters with our two labels added: the engine ANDs label filters, so the
    answer can only narrow to this deployment's bots."""
    try:
        filters = json.loads(raw) if raw else {}
    except ValueError:
        raise Refused(400, "filters is not JSON") from None
    if not isinstance(filters, dict):
        raise Refused(400, "filters must be a JSON object")
    labels = filters.get("label", [])
    if isinstance(labels, dict):  # the older {"a=b": true} spelling
        labels = [k for k, v in labels.items() if v]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise Refused(400, "filters.label must be a list of strings")
    filters["label"] = [*labels, *ours(deployment)]
    return filters


def ours(deployment: str) -> list[str]:
    return [f"{LABEL_MANAGED}=true", f"{LABEL_DEPLOYMENT}={deployment}"]


def _is_ours(labels, deployment: str) -> bool:
    labels = labels or {}
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_DEPLOYMENT) == deployment


def filter_body(upstream: Upstream, status: int, body: bytes, deployment: str) -> tuple[int, bytes]:
    """What the caller may see of the engine's answer."""
    if status != 200 or upstream.kind in ("ping", "version"):
        return status, body
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(502, "the Docker engine answered something that is not JSON") from None
    if upstream.kind == "info":
        data = {"ID": data.get("ID")}
    elif upstream.kind == "list":  # the engine applied the filter; checked again all the same
        data = [entry for entry in data if _is_ours(entry.get("Labels"), deployment)]
    elif upstream.kind == "inspect":
        config = data.get("Config") or {}
        if not _is_ours(config.get("Labels"), deployment):
            raise Refused(404, f"No such container: {upstream.container}")
        config.pop("Env", None)
    return status, json.dumps(data).encode()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _connection(engine: str, timeout: float) -> http.client.HTTPConnection:
    if engine.startswith("unix://"):
        return _UnixConnection(engine.removeprefix("unix://"), timeout)
    if engine.startswith(("tcp://", "http://")):
        return http.client.HTTPConnection(urlsplit(engine).netloc, timeout=timeout)
    raise ValueError(f"engine must be unix:// or tcp://, not {engine!r}")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses its connections
    server_version = "botmanager-docker-readonly-proxy"
    deployment = ""
    engine = ""
    timeout_seconds = 30.0

    def do_GET(self):
        try:
            upstream = route(self.command, self.path, self.deployment)
            status, headers, body = self._ask(upstream)
            status, body = filter_body(upstream, status, body, self.deployment)
        except Refused as refusal:
            if refusal.status == 403:
                log.warning("refused %s %s from %s", self.command, self.path, self.client_address[0])
            self._reply(refusal.status, {"Content-Type": "application/json"},
                        json.dumps({"message": refusal.message}).encode())
            return
        self._reply(status, headers, body)

    def do_HEAD(self):
        # The docker CLI pings with HEAD /_ping first; any other HEAD is refused by route().
        self.do_GET()

    def __getattr__(self, name):
        # Every other method (POST, DELETE, PUT, HEAD...) is refused with the same JSON 403.
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def _refuse(self):
        log.warning("refused %s %s from %s", self.command, self.path, self.client_address[0])
        self.close_connection = True  # a body we did not read may follow
        message = f"the read-only Docker proxy refuses {self.command}: only GET of listings and " \
                  f"inspections of this deployment's bots passes"
        self._reply(403, {"Content-Type": "application/json"}, json.dumps({"message": message}).encode())

    def _ask(self, upstream: Upstream) -> tuple[int, dict, bytes]:
        connection = _connection(self.engine, self.timeout_seconds)
        try:
            connection.request(self.command, upstream.path, headers={"Host": "docker"})
            response = connection.getresponse()
            body = response.read()
        except OSError as exc:
            raise Refused(502, f"the Docker engine at {self.engine} did not answer: {exc}") from exc
        finally:
            connection.close()
        headers = {name: response.headers[name] for name in _HEADERS if response.headers.get(name)}
        return response.status, headers, body

    def _reply(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        # The server's own errors (a malformed request line, a too long header) in JSON too.
        self.close_connection = True
        self._reply(code, {"Content-Type": "application/json"},
                    json.dumps({"message": message or self.responses.get(code, ("error",))[0]}).encode())

    def log_message(self, format, *args):
        log.debug(format, *args)


def make_server(listen: tuple[str, int], deployment: str, engine: str = "unix:///var/run/docker.sock",
                timeout: float = 30.0) -> ThreadingHTTPServer:
    if not deployment:
        raise ValueError("the read-only Docker proxy needs the deployment name (DEPLOYMENT_NAME)")
    _connection(engine, timeout)  # an unusable engine address fails here, not on the first request
    handler = type("DeploymentHandler", (Handler,), {
        "deployment": deployment, "engine": engine, "timeout_seconds": timeout})
    server = ThreadingHTTPServer(listen, handler)
    server.daemon_threads = True
    return server


class _JsonLines(logging.Formatter):
    """One JSON object a line, as the other services log (LOG_FORMAT=json)."""

    def format(self, record):
        return json.dumps({"level": record.levelname, "logger": record.name, "message": record.getMessage()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", required=True, help="DEPLOYMENT_NAME of the services it serves")
    parser.add_argument("--listen", default="0.0.0.0:2375", help="host:port (default 0.0.0.0:2375)")
    parser.add_argument("--engine", default="unix:///var/run/docker.sock", help="the engine it forwards to")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per engine request")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    server = make_server((host or "0.0.0.0", int(port)), args.deployment, args.engine, args.timeout)
    log.info("read-only Docker proxy for deployment %s on %s, engine %s", args.deployment, args.listen,
             args.engine)
    server.serve_forever()


if __name__ == "__main__":
    main()
