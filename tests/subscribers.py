"""Raw subscribers for the envelope transports (docs/STREAMS.md).

Each one speaks its transport over a plain socket and keeps every byte it
received, so that tests can check the wire exactly: envelope frame streams
(``POST /api/stream``), Server-Sent Events (``GET /api/events``) and
WebSocket (``GET /api/ws``). Every wait is a multiple of ``UNIT``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from helpers import (
    PUBLISH_SECRET,
    UNIT,
    Dechunker,
    Stream,
    make_token,
    read_head,
    receive_some,
)


def query(
    *channels: str, last_id: str | None = None, tokens: list[str] | None = None
) -> str:
    """``channel=...&token=...`` pairs, in order, then ``last_id``."""
    tokens = tokens if tokens is not None else [make_token(c) for c in channels]
    pairs: list[tuple[str, str]] = []
    for channel, token in zip(channels, tokens, strict=True):
        pairs += [("channel", channel), ("token", token)]
    if last_id is not None:
        pairs.append(("last_id", last_id))
    return urlencode(pairs)


class Publisher:
    """Publishes over one keep-alive connection; thread-confined."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=5 * UNIT
        )
        self._headers = {
            "Authorization": f"Bearer {PUBLISH_SECRET}",
            "Content-Type": "application/json",
        }

    def publish(self, channel: str, message: Any) -> str:
        """Publish and return the id the daemon assigned."""
        body = {"channel": channel, "message": message, "return_id": True}
        self._connection.request(
            "POST", "/api/publish", json.dumps(body), self._headers
        )
        response = self._connection.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data)
        return str(json.loads(data)["id"])

    def close(self) -> None:
        self._connection.close()


def request_bytes(
    method: str,
    target: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    http10: bool = False,
) -> bytes:
    version = "HTTP/1.0" if http10 else "HTTP/1.1"
    fields = {"Host": "localhost", **(headers or {})}
    if body:
        fields["Content-Type"] = "application/json"
        fields["Content-Length"] = str(len(body))
    lines = [f"{method} {target} {version}"]
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# Length-prefixed envelope frames.


class FrameStream(Stream):
    """A length-prefixed stream opened with any JSON body."""

    @classmethod
    def post(
        cls,
        port: int,
        path: str,
        body: dict[str, Any],
        *,
        http10: bool = False,
        rcvbuf: int | None = None,
    ) -> FrameStream:
        """Send ``body`` to ``path``; read the response head."""
        data = json.dumps(body).encode()
        sock = socket.socket()
        sock.settimeout(5 * UNIT)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request_bytes("POST", path, data, http10=http10))
        status, headers, rest = read_head(sock)
        chunked = headers.get("transfer-encoding") == "chunked"
        stream = cls(sock, status, headers, chunked)
        stream._absorb(rest)
        return stream

    def next_envelope(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """The next envelope; heartbeats are skipped."""
        return dict(self.next_message(timeout))

    def messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` envelopes, which must all be messages."""
        envelopes = [self.next_envelope() for _ in range(count)]
        assert all(e["type"] == "message" for e in envelopes), envelopes
        return envelopes


def open_envelopes(
    port: int,
    channel: str,
    last_id: str | None = None,
    *,
    token: str | None = None,
    **options: Any,
) -> FrameStream:
    """``POST /api/stream/{channel}`` with ``envelope: true``."""
    body: dict[str, Any] = {"token": token or make_token(channel), "envelope": True}
    if last_id is not None:
        body["last_id"] = last_id
    return FrameStream.post(port, f"/api/stream/{channel}", body, **options)


def open_many(
    port: int, *channels: str, last_id: str | None = None, **options: Any
) -> FrameStream:
    """``POST /api/stream`` with one subscription per channel."""
    subscriptions = [{"channel": c, "token": make_token(c)} for c in channels]
    body: dict[str, Any] = {"subscriptions": subscriptions}
    if last_id is not None:
        body["last_id"] = last_id
    return FrameStream.post(port, "/api/stream", body, **options)


# Server-Sent Events.


@dataclass
class Event:
    """One event block; a heartbeat is a block holding only a comment."""

    raw: bytes
    event: str = ""
    id: str | None = None
    data: bytes | None = None
    comment: bool = False

    def json(self) -> Any:
        assert self.data is not None, self.raw
        return json.loads(self.data)


def parse_event(raw: bytes) -> Event:
    event = Event(raw)
    for line in raw.split(b"\n"):
        if line.startswith(b":"):
            event.comment = True
            continue
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"event":
            event.event = value.decode()
        elif name == b"id":
            event.id = value.decode()
        elif name == b"data":
            event.data = value if event.data is None else event.data + b"\n" + value
    return event


class EventStream:
    """A raw ``EventSource``: the head, then events read one by one."""

    def __init__(self, sock: socket.socket, status: int, head: dict[str, str]):
        self.sock = sock
        self.status = status
        self.head = head
        self.chunked = head.get("transfer-encoding") == "chunked"
        self.dechunker = Dechunker()
        self.body = bytearray()
        self.closed = False
        self._pending = bytearray()

    @classmethod
    def open(
        cls,
        port: int,
        target: str,
        headers: Mapping[str, str] | None = None,
        *,
        http10: bool = False,
        rcvbuf: int | None = None,
    ) -> EventStream:
        sock = socket.socket()
        sock.settimeout(5 * UNIT)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        fields = {"Accept": "text/event-stream", **(headers or {})}
        sock.sendall(request_bytes("GET", target, b"", fields, http10=http10))
        status, head, rest = read_head(sock)
        stream = cls(sock, status, head)
        stream._absorb(rest)
        return stream

    def _absorb(self, data: bytes) -> None:
        body = self.dechunker.feed(data) if self.chunked else data
        self.body += body
        self._pending += body

    def _receive(self, deadline: float) -> None:
        if self.closed:
            raise TimeoutError("no event arrived")
        data = receive_some(self.sock, deadline, "event")
        self.closed = not data
        self._absorb(data)

    def next_block(self, timeout: float = 5 * UNIT) -> bytes:
        """The next raw block up to and including its blank line."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self._pending:
            self._receive(deadline)
        end = self._pending.index(b"\n\n") + 2
        block = bytes(self._pending[:end])
        del self._pending[:end]
        return block

    def next_event(self, timeout: float = 5 * UNIT) -> Event:
        """The next block, heartbeats included."""
        return parse_event(self.next_block(timeout)[:-2])

    def next_data(self, timeout: float = 5 * UNIT) -> Event:
        """The next event that carries data; heartbeats are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event.data is not None:
                return event

    def read_to_end(self, timeout: float = 5 * UNIT) -> bytes:
        """Read until the daemon closes; return the whole body."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            self._receive(deadline)
        return bytes(self.body)

    def close(self) -> None:
        self.sock.close()


def open_events(
    port: int,
    *channels: str,
    last_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> EventStream:
    target = "/api/events?" + query(*channels, last_id=last_id)
    return EventStream.open(port, target, headers, **options)


# WebSocket.

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


def masked(opcode: int, payload: bytes) -> bytes:
    """A final frame as a client sends it (RFC 6455, section 5.3)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    else:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    body = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + body


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


class RawWebSocket:
    """A WebSocket client that shows every frame, pings included."""

    def __init__(self, sock: socket.socket, status: int, head: dict[str, str]):
        self.sock = sock
        self.status = status
        self.head = head
        self.closed = False
        self._buffer = bytearray()

    @classmethod
    def open(cls, port: int, target: str, *, rcvbuf: int | None = None) -> RawWebSocket:
        sock = socket.socket()
        sock.settimeout(5 * UNIT)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        sock.sendall(request_bytes("GET", target, b"", headers))
        status, head, rest = read_head(sock)
        websocket = cls(sock, status, head)
        websocket._buffer += rest
        return websocket

    def send(self, opcode: int, payload: bytes = b"") -> None:
        self.sock.sendall(masked(opcode, payload))

    def _frame(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        assert buffer[0] & 0x80, "the daemon sends final frames only"
        assert not buffer[1] & 0x80, "a server never masks"
        size, start = buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                return None
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < start + size:
            return None
        frame = buffer[0] & 0x0F, bytes(buffer[start : start + size])
        del buffer[: start + size]
        return frame

    def next_frame(self, timeout: float = 5 * UNIT) -> tuple[int, bytes]:
        """The next frame as (opcode, payload)."""
        deadline = time.monotonic() + timeout
        while (frame := self._frame()) is None:
            if self.closed:
                raise TimeoutError("no frame arrived")
            data = receive_some(self.sock, deadline, "frame")
            self.closed = not data
            self._buffer += data
        return frame

    def next_envelope(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """The next text message as JSON; pings are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.next_frame(max(0.0, deadline - time.monotonic()))
            if opcode == TEXT:
                return dict(json.loads(payload))
            assert opcode == PING, (opcode, payload)

    def close_code(self, timeout: float = 5 * UNIT) -> tuple[int, str]:
        """Skip to the close frame; return its code and reason."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = self.next_frame(max(0.0, deadline - time.monotonic()))
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big")
                return code, payload[2:].decode()

    def close(self) -> None:
        self.sock.close()


def open_websocket(
    port: int, *channels: str, last_id: str | None = None, **options: Any
) -> RawWebSocket:
    target = "/api/ws?" + query(*channels, last_id=last_id)
    return RawWebSocket.open(port, target, **options)
