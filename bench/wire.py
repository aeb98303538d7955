"""What the load generator says and hears on the wire, for both servers.

Pure functions and sans-I/O decoders: request bytes for subscribing and
publishing, the 100-byte benchmark message, a chunked-body decoder and an
HTTP response reader. Nothing here touches a socket or a clock.

A :class:`Dialect` holds everything that differs between the servers and
transports: how to subscribe, how to publish, which statuses acknowledge a
publish, and how a stream opens and carries messages (a stream decoder per
transport: rpushd's length-prefixed frames, nchan's bare chunks, Server-Sent
Events and WebSocket frames, the last two carrying rpushd's envelopes).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import orjson

MESSAGE_SIZE = 100
MARKER = b'{"bm":'
"""Starts every benchmark message and appears nowhere else in a stream."""

HEARTBEAT_CHUNK = b"2\r\n\x00\x00\r\n"
"""rpushd's heartbeat: an empty frame (2-byte zero length) as one chunk."""

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_HEAD_END = b"\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_ACCEPT = re.compile(rb"\r\nsec-websocket-accept:[ \t]*(\S+)", re.IGNORECASE)
_MESSAGE_FIELD = b',"message":'


class WireError(Exception):
    """A server sent bytes the benchmark cannot make sense of."""


# The benchmark message.


def encode_message(connection: int, seq: int, sent_us: int) -> bytes:
    """The message ``seq`` sent on publisher ``connection`` at ``sent_us``.

    Compact JSON of exactly :data:`MESSAGE_SIZE` bytes. Every value is an
    integer, so a server that re-encodes the JSON (rpushd does) yields the
    same bytes. ``sent_us`` is ``time.monotonic()`` in microseconds, which
    the subscribers share because they live in the same process.
    """
    head = b'{"bm":1,"c":%d,"seq":%d,"t":%d,"pad":"' % (connection, seq, sent_us)
    pad = MESSAGE_SIZE - len(head) - 2
    if pad < 0:
        raise ValueError("message fields do not fit in 100 bytes")
    return head + b"x" * pad + b'"}'


@dataclass(frozen=True, slots=True)
class Message:
    """The fields of a received benchmark message."""

    connection: int
    seq: int
    sent_us: int


def decode_message(payload: bytes) -> Message:
    """Parse a received message; raise :class:`WireError` if it is not one."""
    if len(payload) != MESSAGE_SIZE or not payload.startswith(MARKER):
        raise WireError(f"not a 100-byte benchmark message: {payload[:40]!r}")
    try:
        fields = orjson.loads(payload)
        return Message(fields["c"], fields["seq"], fields["t"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise WireError(f"malformed benchmark message: {payload[:40]!r}") from None


# Decoding what servers send.


def split_head(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """Split a response head off ``buffer``: ``(status, head, rest)``.

    ``None`` while the head is incomplete.
    """
    end = buffer.find(_HEAD_END)
    if end < 0:
        return None
    head = buffer[: end + 4]
    match = _STATUS.match(head)
    if match is None:
        raise WireError(f"not an HTTP/1.x response: {head[:40]!r}")
    return int(match.group(1)), head, buffer[end + 4 :]


def is_chunked(head: bytes) -> bool:
    """Whether a response head announces a chunked body."""
    return _CHUNKED.search(head) is not None


class ChunkDecoder:
    """Splits a chunked response body (RFC 9112, 7.1) into chunk payloads."""

    def __init__(self) -> None:
        self._buffer = b""
        self.ended = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of all complete chunks."""
        buffer = self._buffer + data if self._buffer else data
        chunks = []
        position = 0
        while not self.ended:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size_text = buffer[position:line_end].split(b";", 1)[0]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise WireError(f"bad chunk size line: {size_text[:20]!r}") from None
            start = line_end + 2
            if size == 0:
                self.ended = True
                break
            if len(buffer) < start + size + 2:
                break
            if buffer[start + size : start + size + 2] != b"\r\n":
                raise WireError("chunk not followed by CRLF")
            chunks.append(buffer[start : start + size])
            position = start + size + 2
        self._buffer = buffer[position:]
        return chunks


class ResponseReader:
    """Reads one HTTP response at a time off a keep-alive connection.

    Bodies are delimited by Content-Length (none for 204 and 304); that is
    all a publish answer from either server needs.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[int]:
        """Add received bytes; return the statuses of complete responses."""
        self._buffer += data
        statuses: list[int] = []
        while True:
            split = split_head(self._buffer)
            if split is None:
                return statuses
            status, head, rest = split
            length = 0
            if status not in (204, 304):
                match = _CONTENT_LENGTH.search(head)
                if match is None:
                    raise WireError("publish answer without Content-Length")
                length = int(match.group(1))
            if len(rest) < length:
                return statuses
            self._buffer = rest[length:]
            statuses.append(status)


# Stream decoders: a stream's body in, benchmark messages out.


class StreamDecoder(Protocol):
    """Decodes the body of one stream, whatever its transport.

    ``ready`` turns true once the stream's opening (rpushd's first
    heartbeat, or the hello envelope) has arrived; ``ended`` once the server
    ended the stream.
    """

    @property
    def ready(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the benchmark messages completed."""
        ...


class FramedStream:
    """rpushd's original stream: chunks of a 2-byte length and a payload.

    The first chunk must be a heartbeat (an empty frame); later empty
    frames are heartbeats too.
    """

    def __init__(self) -> None:
        self._chunks = ChunkDecoder()
        self.ready = False

    @property
    def ended(self) -> bool:
        return self._chunks.ended

    def feed(self, data: bytes) -> list[bytes]:
        messages = []
        for chunk in self._chunks.feed(data):
            size = int.from_bytes(chunk[:2], "big")
            if size != len(chunk) - 2:
                raise WireError(f"frame length {size} in a chunk of {len(chunk)}")
            if not self.ready:
                if size:
                    raise WireError("stream did not start with a heartbeat")
                self.ready = True
            elif size:
                messages.append(chunk[2:])
        return messages


class BareStream:
    """nchan's http-chunked stream: each chunk is one message, no opening."""

    def __init__(self) -> None:
        self._chunks = ChunkDecoder()
        self.ready = True

    @property
    def ended(self) -> bool:
        return self._chunks.ended

    def feed(self, data: bytes) -> list[bytes]:
        return self._chunks.feed(data)


def envelope_message(envelope: bytes) -> bytes:
    """The message bytes of a ``message`` envelope, verbatim.

    rpushd writes the ``message`` field last and compact, so the message is
    what lies between that field's name and the closing brace.
    """
    start = envelope.rfind(_MESSAGE_FIELD)
    if start < 0 or not envelope.endswith(b"}"):
        raise WireError(f"message envelope without a message: {envelope[:60]!r}")
    return envelope[start + len(_MESSAGE_FIELD) : -1]


class _EnvelopeStream:
    """What SSE and WebSocket streams share: rpushd's envelopes in order."""

    def __init__(self) -> None:
        self.ready = False
        self.ended = False

    def _envelope(self, data: bytes, event_id: bytes | None = None) -> bytes | None:
        """The benchmark message of one envelope, ``None`` for the others."""
        try:
            envelope = orjson.loads(data)
            kind = envelope["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise WireError(f"malformed envelope: {data[:60]!r}") from None
        if kind == "hello" and not self.ready:
            self.ready = True
            return None
        if kind == "close":
            self.ended = True
            return None
        if kind != "message" or not self.ready:
            raise WireError(f"unexpected {kind!r} envelope: {data[:60]!r}")
        if event_id is not None and event_id.decode() != envelope.get("id"):
            raise WireError(f"event id {event_id!r} is not the envelope's")
        return envelope_message(data)


class SseStream(_EnvelopeStream):
    """Server-Sent Events in a chunked body, one envelope per ``data`` line.

    The ``retry`` preamble, comments (heartbeats) and the named ``hello``
    event open the stream; unnamed events are messages whose ``id`` line
    must match their envelope.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks = ChunkDecoder()
        self._text = b""

    def feed(self, data: bytes) -> list[bytes]:
        text = b"".join(self._chunks.feed(data))
        if self._text:
            text = self._text + text
        *events, self._text = text.split(b"\n\n")
        messages = []
        for event in events:
            message = self._event(event)
            if message is not None:
                messages.append(message)
        if self._chunks.ended:
            self.ended = True
        return messages

    def _event(self, event: bytes) -> bytes | None:
        name = event_id = data = None
        for line in event.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                if data is not None:
                    raise WireError("an event with more than one data line")
                data = value
            elif field == b"event":
                name = value
            elif field == b"id":
                event_id = value
            elif field not in (b"", b"retry"):
                raise WireError(f"unknown event field {line[:40]!r}")
        if data is None:
            return None  # the retry preamble, or a heartbeat comment
        message = self._envelope(data, None if name else event_id)
        if (name is None) != (message is not None):
            raise WireError(f"event {name!r} holds {data[:60]!r}")
        return message


class WebSocketStream(_EnvelopeStream):
    """Unmasked WebSocket frames from the server: text frames of envelopes.

    Pings and pongs are skipped (the daemon wants no pong); a close frame
    ends the stream. No extension is negotiated, so reserved bits, masked
    frames and fragments are errors.
    """

    def __init__(self) -> None:
        super().__init__()
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        messages = []
        position = 0
        while not self.ended and len(buffer) - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            if first & 0x70 or second & 0x80 or not first & 0x80:
                raise WireError(f"unexpected frame header {first:#x} {second:#x}")
            size, start = second & 0x7F, position + 2
            if size >= 126:
                width = 2 if size == 126 else 8
                if len(buffer) < start + width:
                    break
                size = int.from_bytes(buffer[start : start + width], "big")
                start += width
            if len(buffer) < start + size:
                break
            payload = buffer[start : start + size]
            position = start + size
            opcode = first & 0x0F
            if opcode == 0x1:
                message = self._envelope(payload)
                if message is not None:
                    messages.append(message)
            elif opcode == 0x8:
                self.ended = True
            elif opcode not in (0x9, 0xA):
                raise WireError(f"unexpected frame opcode {opcode:#x}")
        self._buffer = buffer[position:]
        return messages


def websocket_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def websocket_accept(key: str) -> bytes:
    """The Sec-WebSocket-Accept a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())


# The servers' dialects.


@dataclass(frozen=True, slots=True)
class Dialect:
    """How the load generator talks to one server over one transport.

    ``subscribe_target`` has ``{channel}`` and ``{token}`` holes; the token
    goes there (GET transports) or into a JSON body (``token_in_body``).
    ``upgrade`` makes the subscribe a WebSocket handshake, answered by 101
    and checked against its key; other streams answer 200 with a chunked
    body. ``publish_path`` has a ``{channel}`` hole; rpushd's publish body
    wraps the message (``wrapped``), nchan's is the message alone.
    ``decoder`` makes the stream decoder of one subscriber.
    """

    name: str
    transport: str
    subscribe_target: str
    subscribe_method: str
    subscribe_headers: str
    token_in_body: bool
    upgrade: bool
    publish_path: str
    publish_headers: str
    wrapped: bool
    acked_statuses: frozenset[int]
    decoder: Callable[[], StreamDecoder]

    @property
    def open_status(self) -> int:
        return 101 if self.upgrade else 200

    def subscribe_request(self, channel: str, token: str = "", key: str = "") -> bytes:
        """The request that opens a stream on ``channel``.

        ``key`` is the WebSocket key of an upgrade (see :func:`websocket_key`).
        """
        target = self.subscribe_target.format(
            channel=quote(channel, safe=""), token=quote(token, safe="")
        )
        headers = self.subscribe_headers
        if self.upgrade:
            headers += (
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            )
        body = b""
        if self.token_in_body and token:
            body = b'{"token":"%s"}' % token.encode("ascii")
        if self.subscribe_method == "POST":
            headers += f"Content-Length: {len(body)}\r\n"
        head = f"{self.subscribe_method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        return (head + headers + "\r\n").encode("ascii") + body

    def head_problem(self, status: int, head: bytes, key: str = "") -> str:
        """Why a stream's response head is not an opening; empty if it is."""
        if status != self.open_status:
            return f"status {status}"
        if not self.upgrade:
            return "" if is_chunked(head) else "stream body not chunked"
        match = _ACCEPT.search(head)
        if match is None or match.group(1) != websocket_accept(key):
            return "wrong or missing Sec-WebSocket-Accept"
        return ""

    def publish_template(self, channel: str) -> tuple[bytes, bytes]:
        """``(before, after)``: a publish request is ``before + message + after``.

        Messages all have the same size, so everything but the message
        itself is built once per channel.
        """
        if self.wrapped:
            before = b'{"channel":"%s","message":' % channel.encode("ascii")
            after = b"}"
        else:
            before = after = b""
        length = len(before) + MESSAGE_SIZE + len(after)
        path = self.publish_path.format(channel=channel)
        head = "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n"
        return (head % (path, self.publish_headers, length)).encode() + before, after

    def publish_request(self, channel: str, message: bytes) -> bytes:
        """The request that publishes ``message`` to ``channel``."""
        before, after = self.publish_template(channel)
        return before + message + after


RPUSHD_TRANSPORTS = ("stream", "sse", "websocket")
"""``stream`` is the original length-prefixed stream (POST /api/stream)."""


def rpushd_dialect(publish_secret: str, transport: str = "stream") -> Dialect:
    """rpushd over ``transport``; publishes go to POST /api/publish.

    - stream: POST /api/stream/<channel> with a token, length-prefixed frames
    - sse: GET /api/events?channel=..&token=.., events of envelopes
    - websocket: GET /api/ws?channel=..&token=.., text frames of envelopes
    """
    query = "?channel={channel}&token={token}"
    subscribe: dict[str, tuple[str, Callable[[], StreamDecoder]]] = {
        "stream": ("/api/stream/{channel}", FramedStream),
        "sse": ("/api/events" + query, SseStream),
        "websocket": ("/api/ws" + query, WebSocketStream),
    }
    if transport not in subscribe:
        raise ValueError(f"unknown rpushd transport {transport!r}")
    target, decoder = subscribe[transport]
    original = transport == "stream"
    return Dialect(
        name="ours",
        transport=transport,
        subscribe_target=target,
        subscribe_method="POST" if original else "GET",
        subscribe_headers="Content-Type: application/json\r\n" if original else "",
        token_in_body=original,
        upgrade=transport == "websocket",
        publish_path="/api/publish",
        publish_headers=(
            f"Authorization: Bearer {publish_secret}\r\n"
            "Content-Type: application/json\r\n"
        ),
        wrapped=True,
        acked_statuses=frozenset({204}),
        decoder=decoder,
    )


def nchan_dialect() -> Dialect:
    """nchan: GET /sub/<channel> with ``TE: chunked``, POST /pub/<channel>.

    nchan's http-chunked subscriber is chosen by the ``TE: chunked``
    request header; without it nchan answers 403.
    """
    return Dialect(
        name="nchan",
        transport="stream",
        subscribe_target="/sub/{channel}",
        subscribe_method="GET",
        subscribe_headers="TE: chunked\r\n",
        token_in_body=False,
        upgrade=False,
        publish_path="/pub/{channel}",
        publish_headers="Content-Type: application/json\r\n",
        wrapped=False,
        acked_statuses=frozenset({201, 202}),
        decoder=BareStream,
    )
