"""What the load generator says and hears on the wire, for both servers.

Pure functions and sans-I/O decoders: request bytes for subscribing and
publishing, the 100-byte benchmark message, a chunked-body decoder and an
HTTP response reader. Nothing here touches a socket or a clock.

A :class:`Dialect` holds everything that differs between rpushd and nchan:
how to subscribe, how to publish, which statuses acknowledge a publish,
and how a stream's first bytes and chunks look.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

MESSAGE_SIZE = 100
MARKER = b'{"bm":'
"""Starts every benchmark message and appears nowhere else in a stream."""

HEARTBEAT_CHUNK = b"2\r\n\x00\x00\r\n"
"""rpushd's heartbeat: an empty frame (2-byte zero length) as one chunk."""

_HEAD_END = b"\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


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


# The two servers' dialects.


@dataclass(frozen=True, slots=True)
class Dialect:
    """How the load generator talks to one kind of server.

    ``subscribe`` and ``publish`` hold request bytes with ``{channel}``-style
    holes filled by the methods below. ``framed`` says whether each chunk
    carries a 2-byte length before the message (rpushd) or the message
    alone (nchan). ``ready_after`` is what must follow the response head
    before a stream counts as open: rpushd's first heartbeat, or nothing
    for nchan, which sends no heartbeat frame by default.
    """

    name: str
    subscribe_path: str
    subscribe_method: str
    subscribe_headers: str
    publish_headers: str
    acked_statuses: frozenset[int]
    framed: bool
    ready_after: bytes

    def subscribe_request(self, channel: str, token: str = "") -> bytes:
        """The request that opens a stream on ``channel``."""
        body = b""
        if token:
            body = b'{"token":"%s"}' % token.encode("ascii")
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n"
        path = self.subscribe_path % channel
        return (
            head % (self.subscribe_method, path, self.subscribe_headers, len(body))
        ).encode("ascii") + body

    def publish_template(self, channel: str) -> tuple[bytes, bytes]:
        """``(before, after)``: a publish request is ``before + message + after``.

        Messages all have the same size, so everything but the message
        itself is built once per channel.
        """
        if self.framed:
            before = b'{"channel":"%s","message":' % channel.encode("ascii")
            after = b"}"
            path = "/api/publish"
        else:
            before = after = b""
            path = f"/pub/{channel}"
        length = len(before) + MESSAGE_SIZE + len(after)
        head = "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n"
        return (head % (path, self.publish_headers, length)).encode() + before, after

    def publish_request(self, channel: str, message: bytes) -> bytes:
        """The request that publishes ``message`` to ``channel``."""
        before, after = self.publish_template(channel)
        return before + message + after

    def message_of(self, chunk: bytes) -> bytes | None:
        """The message a stream chunk carries, or ``None`` for a heartbeat."""
        if not self.framed:
            return chunk
        size = int.from_bytes(chunk[:2], "big")
        if size != len(chunk) - 2:
            raise WireError(f"frame length {size} in a chunk of {len(chunk)}")
        return chunk[2:] if size else None


def rpushd_dialect(publish_secret: str) -> Dialect:
    """rpushd: POST /api/stream/<channel> with a token, POST /api/publish."""
    return Dialect(
        name="ours",
        subscribe_path="/api/stream/%s",
        subscribe_method="POST",
        subscribe_headers="Content-Type: application/json\r\n",
        publish_headers=(
            f"Authorization: Bearer {publish_secret}\r\n"
            "Content-Type: application/json\r\n"
        ),
        acked_statuses=frozenset({204}),
        framed=True,
        ready_after=HEARTBEAT_CHUNK,
    )


def nchan_dialect() -> Dialect:
    """nchan: GET /sub/<channel> with ``TE: chunked``, POST /pub/<channel>.

    nchan's http-chunked subscriber is chosen by the ``TE: chunked``
    request header; without it nchan answers 403.
    """
    return Dialect(
        name="nchan",
        subscribe_path="/sub/%s",
        subscribe_method="GET",
        subscribe_headers="TE: chunked\r\n",
        publish_headers="Content-Type: application/json\r\n",
        acked_statuses=frozenset({201, 202}),
        framed=False,
        ready_after=b"",
    )
