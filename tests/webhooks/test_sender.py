"""The HTTP side of one attempt (webhooks.sender), against real sockets on localhost: the connect
timeout apart from the attempt's timeout, one name resolution whose checked address is the one
connected to, TLS verified against the host name."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.webhooks.receiver import Answer, Blackhole
from webhooks import sender

BODY = b'{"event":"test"}'
HEADERS = {"Content-Type": "application/json", "X-Webhook-Id": "w-1"}


@pytest.fixture
def blackhole():
    hole = Blackhole()
    yield hole
    hole.close()


def test_a_host_that_never_accepts_the_connection_times_out_after_the_connect_timeout(blackhole):
    started = time.monotonic()

    result = sender.post(blackhole.url, BODY, HEADERS, timeout=10, connect_timeout=0.5)

    assert (result.code, result.error, result.permanent) == (None, "connect timeout", False)
    assert 0.4 < time.monotonic() - started < 1.5
    assert result.duration_ms < 1500


def test_the_connect_timeout_never_outlasts_the_attempts_timeout(blackhole):
    started = time.monotonic()

    result = sender.post(blackhole.url, BODY, HEADERS, timeout=0.3, connect_timeout=5)

    assert result.error == "connect timeout"
    assert time.monotonic() - started < 1


def test_a_receiver_that_accepts_and_never_answers_is_given_up_at_the_attempts_timeout(receiver):
    receiver.default = Answer(hang=True)
    started = time.monotonic()

    result = sender.post(receiver.url, BODY, HEADERS, timeout=0.5, connect_timeout=0.2)

    assert (result.code, result.error) == (None, "timeout")
    assert 0.4 < time.monotonic() - started < 1.5
    assert len(receiver.posts()) == 1  # connected and sent: only the answer never came


def test_a_slow_body_is_cut_at_the_attempts_deadline_and_the_status_kept():
    """The status line came in time: it is the answer, whatever the body does after it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 100\r\n\r\npartial")
        time.sleep(2)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    started = time.monotonic()
    try:
        result = sender.post(f"http://127.0.0.1:{server.getsockname()[1]}/", BODY, HEADERS, timeout=0.5)
    finally:
        server.close()

    assert (result.code, result.body, result.retry_after) == (503, "partial", "7")
    assert time.monotonic() - started < 1.5


def test_the_name_is_resolved_once_and_the_checked_address_is_the_one_connected_to(receiver, monkeypatch):
    lookups, checked = [], []
    real = socket.getaddrinfo

    def counting(host, *args, **kwargs):
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)  # the real resolver, counted

    def refuse(address: str) -> bool:
        checked.append(address)
        return False

    url = f"http://localhost:{receiver.port}/hook"
    result = sender.post(url, BODY, HEADERS, timeout=5, refuse_address=refuse)

    assert result.code == 200
    assert lookups == ["localhost"]
    assert "127.0.0.1" in checked
    [got] = receiver.posts()
    assert got.headers["Host"] == f"localhost:{receiver.port}"  # the name, not the address
    assert got.body == BODY and got.headers["X-Webhook-Id"] == "w-1"


def test_a_refused_address_is_not_connected_to_and_the_result_is_permanent(receiver):
    result = sender.post(receiver.url, BODY, HEADERS, timeout=5, refuse_address=lambda address: True)

    assert (result.code, result.permanent) == (None, True)
    assert "private or loopback" in result.error
    assert receiver.posts() == []


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "mailto:a@example.com"])
def test_a_url_that_cannot_be_posted_to_is_a_permanent_error(url):
    result = sender.post(url, BODY, HEADERS, timeout=1)

    assert (result.code, result.permanent) == (None, True)


def test_an_unknown_host_is_a_retryable_error():
    result = sender.post("http://no-such-host.invalid/hook", BODY, HEADERS, timeout=5)

    assert (result.code, result.permanent) == (None, False)
    assert result.error


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server with a self-signed certificate for "localhost"; records the SNI name."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate
            finally:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], names
    server.close()


def test_tls_is_verified_against_the_host_name_sent_as_sni(tls_server):
    port, names = tls_server

    result = sender.post(f"https://localhost:{port}/hook", BODY, HEADERS, timeout=5)

    # The self-signed certificate is not trusted: verification is on, and it was asked for the name.
    assert result.code is None
    assert result.error.startswith("TLS error") and "certificate verify failed" in result.error
    assert names == ["localhost"]
