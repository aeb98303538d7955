"""Lifecycle against the real daemon: shutdown, slow and vanished
subscribers, the idle-channel sweep, and start-up refusals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import (
    PUBLISH_SECRET,
    UNIT,
    Daemon,
    Stream,
    connect,
    free_port,
    make_token,
    wait_until,
)

# Shutdown.


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_every_stream_properly_and_exits_0(sig: int) -> None:
    with Daemon() as daemon:
        chunked = daemon.subscribe("bye")
        bare = Stream.open(daemon.port, "bye", make_token("bye"), http10=True)
        assert bare.next_frame() == b""

        started = time.monotonic()
        assert daemon.stop(sig) == 0
        assert time.monotonic() - started < 5 * UNIT

        assert chunked.read_to_end().endswith(b"\r\n0\r\n\r\n")
        assert bare.read_to_end() == b"\x00\x00"
        assert "shutting down" in daemon.log_text()
        assert "Traceback" not in daemon.log_text()


def test_acknowledged_publish_reaches_streams_before_shutdown() -> None:
    with Daemon() as daemon:
        streams = [daemon.subscribe("last") for _ in range(20)]
        for number in range(100):
            assert daemon.publish("last", number).status == 204
        assert daemon.stop() == 0

        for stream in streams:
            received = [stream.next_message() for _ in range(100)]
            assert received == list(range(100))
            assert stream.read_to_end().endswith(b"0\r\n\r\n")


def test_publish_in_flight_during_shutdown_is_finished() -> None:
    with Daemon() as daemon:
        stream = daemon.subscribe("late")
        body = json.dumps({"channel": "late", "message": "in flight"}).encode()
        head = (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + PUBLISH_SECRET.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with connect(daemon.port) as publisher:
            publisher.sendall(head)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGTERM)
            daemon.wait_for_log("shutting down")
            publisher.sendall(body)
            assert publisher.recv(100).startswith(b"HTTP/1.1 204")
        assert daemon.stop() == 0
        assert stream.next_message() == "in flight"


def test_request_unfinished_after_the_grace_period_gets_503() -> None:
    with Daemon(shutdown_grace_secs="1") as daemon, connect(daemon.port) as slow:
        slow.sendall(b"POST /api/publish HTTP/1.1\r\nHost: x\r\n")
        daemon.wait_for_log("listening on")
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 1.8 * UNIT
        assert slow.recv(100).startswith(b"HTTP/1.1 503")


def test_idle_keep_alive_connections_do_not_delay_shutdown() -> None:
    with Daemon() as daemon, connect(daemon.port) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1000).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 3 * UNIT


# Slow and vanished subscribers.


def test_slow_subscriber_is_disconnected_counted_and_logged() -> None:
    with Daemon(max_pending_bytes="65536") as daemon:
        healthy = daemon.subscribe("flood")

        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", daemon.port))
        body = json.dumps({"token": make_token("flood")}).encode()
        slow.sendall(
            b"POST /api/stream/flood HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        wait_until(lambda: daemon.stats()["active_subscribers"] == 2)

        message = "x" * 10000
        sent = 0
        while daemon.stats()["slow_subscriber_disconnects_total"] == 0:
            assert sent < 5000, "the slow subscriber was never disconnected"
            for _ in range(20):
                assert (
                    daemon.publish("flood", {"n": sent, "pad": message}).status == 204
                )
                sent += 1
                assert healthy.next_message()["n"] == sent - 1

        daemon.wait_for_log("disconnected slow subscriber")
        stats = daemon.stats()
        assert stats["active_subscribers"] == 1
        assert stats["slow_subscriber_disconnects_total"] == 1
        slow.close()


def test_vanished_subscriber_is_removed_at_once(daemon: Daemon) -> None:
    stream = daemon.subscribe("gone")
    assert daemon.stats()["active_subscribers"] == 1
    stream.close()
    wait_until(lambda: daemon.stats()["active_subscribers"] == 0)

    assert daemon.publish("gone", "anyone?").status == 204
    assert daemon.stats()["active_stream_connections"] == 0
    assert "Traceback" not in daemon.log_text()


def test_reset_subscribers_cost_nothing_to_publish_to(daemon: Daemon) -> None:
    streams = [daemon.subscribe("reset") for _ in range(50)]
    for stream in streams:
        stream.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        stream.close()
    for number in range(20):
        assert daemon.publish("reset", number).status == 204
    wait_until(lambda: daemon.stats()["active_subscribers"] == 0)
    assert "Traceback" not in daemon.log_text()
    assert "ERROR" not in daemon.log_text()


# Channels.


def test_idle_channels_are_swept_after_the_ttl() -> None:
    with Daemon(channel_idle_ttl_secs="1") as daemon:
        held = daemon.subscribe("kept")
        daemon.publish("dropped", 1)
        assert daemon.stats()["retained_channels"] == 2
        wait_until(lambda: daemon.stats()["retained_channels"] == 1, 5 * UNIT)
        assert [c["name"] for c in daemon.stats()["channels"]] == ["kept"]
        daemon.wait_for_log("dropped 1 idle channels")
        held.close()


# Start-up refusals.


def run_daemon_expecting_failure(
    env: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpushd", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=10 * UNIT,
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"RPUSHD_SECRET": None}, "RPUSHD_SECRET"),
        ({"RPUSHD_SECRET": "   "}, "RPUSHD_SECRET"),
        ({"RPUSHD_PUBLISH_SECRET": None}, "RPUSHD_PUBLISH_SECRET"),
        ({"RPUSHD_PUBLISH_SECRET": "\t"}, "RPUSHD_PUBLISH_SECRET"),
        ({"RPUSHD_HEARTBEAT_SECS": "0"}, "RPUSHD_HEARTBEAT_SECS"),
        ({"RPUSHD_HEARTBEAT_SECS": "1.5"}, "RPUSHD_HEARTBEAT_SECS"),
        ({"RPUSHD_CHANNEL_IDLE_TTL_SECS": "-1"}, "RPUSHD_CHANNEL_IDLE_TTL_SECS"),
        ({"RPUSHD_LISTEN": "localhost:80"}, "RPUSHD_LISTEN"),
        ({"RPUSHD_LISTEN": "127.0.0.1"}, "RPUSHD_LISTEN"),
        ({"RPUSHD_LISTEN": "::1:45831"}, "RPUSHD_LISTEN"),
        ({"RPUSHD_MAX_PENDING_BYTES": "lots"}, "RPUSHD_MAX_PENDING_BYTES"),
        ({"RPUSHD_LOG_LEVEL": "loud"}, "RPUSHD_LOG_LEVEL"),
    ],
)
def test_invalid_configuration_stops_before_binding_with_one_line(
    override: dict[str, str | None], named: str
) -> None:
    env = dict(Daemon().env)
    for name, value in override.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    result = run_daemon_expecting_failure(env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr


SHARED = "another process already listens on"


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_second_daemon_on_the_same_address_warns_that_the_kernel_shares_it(
    host: str,
) -> None:
    # SO_REUSEPORT lets both bind (PROTOCOL.md); only the log can tell.
    with Daemon(listen=f"{host}:{free_port()}") as first:
        with Daemon(listen=f"{host}:{first.port}") as second:
            line = second.wait_for_log(SHARED)
            assert "WARNING" in line
            assert f"{host}:{first.port}" in line
            assert "zero-downtime restart" in line
        assert SHARED not in first.log_text()


def test_secrets_are_trimmed() -> None:
    with Daemon(secret="  " + "padded-secret" + "\n") as daemon:
        token = make_token("trim", secret="padded-secret")
        assert Stream.open(daemon.port, "trim", token).status == 200


def test_listens_on_ipv6_loopback() -> None:
    daemon = Daemon(listen="[::1]:0")
    with daemon:
        daemon.host = "::1"
        assert daemon.request("GET", "/healthz").status == 200


def test_no_secret_or_token_is_ever_logged() -> None:
    with Daemon(log_level="debug") as daemon:
        token = make_token("room")
        Stream.open(daemon.port, "other", token).close()
        daemon.request("GET", "/api/stats", headers={"Authorization": "Bearer guess"})
        stream = daemon.subscribe("room", token)
        daemon.publish("room", 1)
        stream.next_message()
        daemon.stop()
    logs = daemon.log_text()
    for secret in (token, PUBLISH_SECRET, "guess", token.split(".")[2]):
        assert secret not in logs
