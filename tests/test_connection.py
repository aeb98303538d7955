"""HTTP hygiene: framing, limits, timeouts and garbage, over raw sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from helpers import (
    PUBLISH_SECRET,
    UNIT,
    Daemon,
    connect,
    make_token,
    read_head,
    read_until_closed,
)

AUTH = b"Authorization: Bearer " + PUBLISH_SECRET.encode() + b"\r\n"


@pytest.fixture
def strict_daemon() -> Iterator[Daemon]:
    """A daemon with short request and keep-alive timeouts."""
    with Daemon(request_timeout_secs="1", keepalive_timeout_secs="2") as running:
        yield running


def exchange(daemon: Daemon, data: bytes) -> bytes:
    """Send raw bytes, return everything until the daemon closes."""
    with connect(daemon.port) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def publish_request(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\n" + extra
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def assert_still_healthy(daemon: Daemon) -> None:
    assert daemon.request("GET", "/healthz").status == 200
    assert "Traceback" not in daemon.log_text()
    assert daemon.process is not None and daemon.process.poll() is None


FRAMED = (
    b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
    + AUTH
    + (b"Content-Type: application/json\r\n")
)


@pytest.mark.parametrize(
    "request_bytes",
    [
        FRAMED + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        FRAMED + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        FRAMED + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        FRAMED + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        FRAMED + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        FRAMED + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /he\x00althz HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" * 50,
    ],
    ids=[
        "length-and-chunked",
        "two-lengths",
        "obfuscated-te",
        "space-before-colon",
        "chunked-not-last",
        "bad-chunk-size",
        "garbage",
        "tls-hello",
        "bad-version",
        "nul-in-target",
        "request-lines-as-headers",
    ],
)
def test_malformed_framing_gets_400_and_the_connection_closed(
    daemon: Daemon, request_bytes: bytes
) -> None:
    response = exchange(daemon, request_bytes)
    assert status_of(response) == 400
    assert b"Connection: close" in response
    assert response.endswith(b"}")
    assert_still_healthy(daemon)


def test_requests_pipelined_after_a_bad_one_are_not_served(daemon: Daemon) -> None:
    smuggled = publish_request(b'{"channel":"c","message":"smuggled"}')
    response = exchange(
        daemon,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
    )
    assert response.count(b"HTTP/1.1") == 1
    assert daemon.stats()["publish_requests_total"] == 0


def test_oversized_headers_get_431(daemon: Daemon) -> None:
    response = exchange(
        daemon, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert status_of(response) == 431
    assert_still_healthy(daemon)


def test_too_many_header_fields_get_431(daemon: Daemon) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % number for number in range(200))
    response = exchange(daemon, b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n")
    assert status_of(response) == 431


def test_oversized_url_gets_431(daemon: Daemon) -> None:
    response = exchange(daemon, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert status_of(response) == 431


def test_chunked_body_over_16_kib_gets_413(daemon: Daemon) -> None:
    chunk = b"a" * 8192
    body = b"".join(b"2000\r\n" + chunk + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    response = exchange(
        daemon,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body,
    )  # fmt: skip
    assert status_of(response) == 413


def test_chunked_publish_body_is_accepted(daemon: Daemon) -> None:
    stream = daemon.subscribe("c")
    body = b'{"channel":"c","message":"chunky"}'
    response_head = exchange(
        daemon,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + b"Connection: close\r\n\r\n"
        + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
    )  # fmt: skip
    assert status_of(response_head) == 204
    assert stream.next_message() == "chunky"


def test_announced_oversized_body_is_refused_before_it_is_sent(
    daemon: Daemon,
) -> None:
    with connect(daemon.port) as sock:
        sock.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Content-Type: application/json\r\nContent-Length: 100000\r\n"
            + b"Expect: 100-continue\r\n\r\n"
        )  # fmt: skip
        status, _, _ = read_head(sock)
    assert status == 413


def test_expect_100_continue_is_answered(daemon: Daemon) -> None:
    body = b'{"channel":"c","message":1}'
    with connect(daemon.port) as sock:
        sock.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
        )  # fmt: skip
        status, _, _ = read_head(sock)
        assert status == 100
        sock.sendall(body)
        status, _, _ = read_head(sock)
        assert status == 204


def test_stalled_headers_get_408_within_the_request_timeout(
    strict_daemon: Daemon,
) -> None:
    with connect(strict_daemon.port) as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        response = read_until_closed(sock, timeout=5 * UNIT)
    assert status_of(response) == 408
    assert time.monotonic() - started < 3 * UNIT
    assert_still_healthy(strict_daemon)


def test_stalled_body_gets_408(strict_daemon: Daemon) -> None:
    with connect(strict_daemon.port) as sock:
        sock.sendall(publish_request(b'{"channel":"c","message":1}')[:-5])
        response = read_until_closed(sock, timeout=5 * UNIT)
    assert status_of(response) == 408


def test_idle_keep_alive_connection_is_closed(strict_daemon: Daemon) -> None:
    with connect(strict_daemon.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        response = read_until_closed(sock, timeout=6 * UNIT)
    assert status_of(response) == 200
    assert 1.5 <= time.monotonic() - started < 4 * UNIT


def test_connection_close_is_honoured(daemon: Daemon) -> None:
    response = exchange(
        daemon, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200
    assert b"Connection: close" in response


def test_http10_request_without_keep_alive_is_closed(daemon: Daemon) -> None:
    response = exchange(daemon, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200
    assert response.endswith(b'{"status":"ok"}')


def test_websocket_upgrade_is_refused_cleanly(daemon: Daemon) -> None:
    response = exchange(
        daemon,
        b"GET /api/stream/room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n",
    )
    assert 400 <= status_of(response) < 500
    assert_still_healthy(daemon)


@pytest.mark.parametrize(
    "token",
    [
        "eyJ" + "W" * 4000 + ".eyJ.sig",
        make_token("room") + "\ud800",
        "a.b.c",
        "....",
        "\u0430.\u0430.\u0430",
    ],
    ids=["long", "lone-surrogate", "short-parts", "dots", "cyrillic"],
)
def test_hostile_tokens_get_401(daemon: Daemon, token: str) -> None:
    body = json.dumps({"token": token}, ensure_ascii=True).encode()
    response = exchange(
        daemon,
        b"POST /api/stream/room HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body,
    )
    assert status_of(response) in (400, 401)
    assert_still_healthy(daemon)


def test_deeply_nested_token_payload_is_refused(daemon: Daemon) -> None:
    import base64
    import hashlib
    import hmac

    from helpers import SECRET

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = b"[" * 3000 + b"]" * 3000
    signed = b64(b"{}") + "." + b64(payload)
    mac = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).digest()
    token = signed + "." + b64(mac)
    reply = daemon.request("POST", "/api/stream/room", {"token": token})
    assert reply.status == 401
    assert_still_healthy(daemon)


def test_many_bad_requests_do_not_disturb_a_subscriber(daemon: Daemon) -> None:
    stream = daemon.subscribe("calm")
    for garbage in (b"\x00" * 100, b"GET / HTTP/1.1\r\n" * 50, b"\xff" * 9000):
        exchange(daemon, garbage)
    daemon.publish("calm", "still here")
    assert stream.next_message() == "still here"


def test_client_that_half_closes_after_request_still_gets_answer(
    daemon: Daemon,
) -> None:
    with connect(daemon.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = read_until_closed(sock)
    assert status_of(response) == 200


def test_upgrade_we_do_not_speak_is_ignored_and_the_body_still_read(
    daemon: Daemon,
) -> None:
    stream = daemon.subscribe("h2c")
    body = b'{"channel":"h2c","message":"upgraded?"}'
    response = exchange(
        daemon,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        + b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        + b"Content-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body,
    )  # fmt: skip
    assert response.count(b"HTTP/1.1 ") == 1
    assert status_of(response) == 204
    assert stream.next_message() == "upgraded?"


def test_upgrade_header_on_a_bodiless_request_gets_one_answer(
    daemon: Daemon,
) -> None:
    response = exchange(
        daemon,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
    )
    assert response.count(b"HTTP/1.1 ") == 1
    assert status_of(response) == 200


def test_header_line_that_never_ends_is_refused_before_the_timeout(
    daemon: Daemon,
) -> None:
    with connect(daemon.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        started = time.monotonic()
        try:
            for _ in range(64):
                sock.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_until_closed(sock)
    assert status_of(response) == 431
    assert time.monotonic() - started < 2 * UNIT


def test_endless_chunk_extension_is_refused_before_the_timeout(
    daemon: Daemon,
) -> None:
    with connect(daemon.port) as sock:
        sock.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            + b"\r\n1;ext="
        )  # fmt: skip
        try:
            for _ in range(64):
                sock.sendall(b"e" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_until_closed(sock)
    assert status_of(response) == 413


def test_fresh_connection_that_sends_nothing_gets_the_request_timeout(
    strict_daemon: Daemon,
) -> None:
    with connect(strict_daemon.port) as sock:
        started = time.monotonic()
        assert read_until_closed(sock, timeout=5 * UNIT) == b""
    assert time.monotonic() - started < 1.9 * UNIT


@pytest.mark.parametrize(
    ("target", "status"),
    [("/nope", 404), ("/api/publish", 405), ("/api/stats", 401)],
)
def test_head_requests_refused_from_their_headers_get_no_body(
    daemon: Daemon, target: str, status: int
) -> None:
    response = exchange(daemon, f"HEAD {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == status
    assert b"Content-Length: " in head
    assert body == b""
