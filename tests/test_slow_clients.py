"""Hundreds of slow and stalled clients are closed in bounded time, while
ordinary subscribers keep receiving (issue 4, "Limits")."""

from __future__ import annotations

import json
import selectors
import socket
import time

from helpers import PUBLISH_SECRET, UNIT, Daemon

SLOW_CLIENTS = 500
TIMEOUT_SECS = 2


def open_slow_clients(port: int) -> list[socket.socket]:
    """Slowloris on headers, on bodies, and idle keep-alive connections."""
    body = json.dumps({"channel": "calm", "message": 1}).encode()
    partial_body = (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + PUBLISH_SECRET.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:5]
    )
    openings = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a",
        partial_body,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    ]
    clients = []
    for number in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT)
        opening = openings[number % len(openings)]
        if opening:
            sock.sendall(opening)
        clients.append(sock)
    return clients


def wait_all_closed(clients: list[socket.socket], timeout: float) -> None:
    """Wait until the daemon closed every client; fail past ``timeout``."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    for sock in clients:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_count = len(clients)
    while open_count:
        assert time.monotonic() - started < timeout, f"{open_count} still open"
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                open_count -= 1


def test_500_stalled_clients_are_closed_while_subscribers_keep_receiving() -> None:
    settings = {
        "request_timeout_secs": str(TIMEOUT_SECS),
        "keepalive_timeout_secs": str(TIMEOUT_SECS),
    }
    with Daemon(**settings) as daemon:
        subscribers = [daemon.subscribe("calm") for _ in range(5)]
        clients = open_slow_clients(daemon.port)
        opened = time.monotonic()

        # Ordinary traffic goes on, promptly, while the stalled clients sit.
        for number in range(10):
            sent = time.monotonic()
            assert daemon.publish("calm", number).status == 204
            for subscriber in subscribers:
                assert subscriber.next_message(timeout=1 * UNIT) == number
            assert time.monotonic() - sent < 0.5 * UNIT

        # Each was closed within its timeout (plus a scheduling margin),
        # counted from when the last of them connected.
        wait_all_closed(clients, timeout=4 * TIMEOUT_SECS * UNIT)
        assert time.monotonic() - opened < (TIMEOUT_SECS + 1.5) * UNIT
        stats = daemon.stats()
        assert stats["open_connections"] <= len(subscribers) + 1
        assert stats["active_subscribers"] == len(subscribers)
        assert "Traceback" not in daemon.log_text()
