"""What the fuzz tests share: hypothesis profiles, and raw HTTP fuzzing.

Importing this module registers two hypothesis profiles and loads the one
named by ``RPUSHD_FUZZ_PROFILE``:

- ``ci`` (the default): 150 examples per property, short enough for every
  test run;
- ``long``: 20,000 examples per property, for a deliberate hunt
  (``RPUSHD_FUZZ_PROFILE=long ./scripts/test tests/test_fuzz_*.py``).

Neither has a deadline: a daemon under test, a loaded machine or a slow
CI runner makes timings meaningless.

The rest serves the HTTP fuzzing of ``tests/test_fuzz_http.py`` and of the
long run in ``bench/fuzz_live.py``, so that both send requests from the
same grammar and judge the answers by the same rules. The grammar draws
its choices from a :class:`Chooser`: hypothesis draws in the tests (so a
failure shrinks to a small request), a seeded :class:`random.Random` in the
long run (so a failure replays from its seed alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from helpers import PUBLISH_SECRET, SECRET, UNIT, make_token, wait_until
from rpushd import tokens
from rpushd.tokens import U64_MAX

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("RPUSHD_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)

T = TypeVar("T")


# Where choices come from.


class Chooser(Protocol):
    """The source of every choice the request grammar makes."""

    def pick(self, options: Sequence[T]) -> T: ...

    def number(self, low: int, high: int) -> int: ...

    def chance(self, probability: float) -> bool: ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    """Choices from a seeded :class:`random.Random`: replayable by seed."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return self._random.choice(options)

    def number(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def chance(self, probability: float) -> bool:
        return self._random.random() < probability

    def blob(self, max_size: int) -> bytes:
        return self._random.randbytes(self._random.randint(0, max_size))


_PER_MILLE = range(1000)


class DrawChooser:
    """Choices drawn by hypothesis, which shrinks them toward the first option.

    ``chance`` shrinks toward ``False``: a failing request loses its
    optional oddities one by one.
    """

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def number(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def chance(self, probability: float) -> bool:
        # sampled_from draws evenly; integers() would favour small numbers.
        roll = self._draw(st.sampled_from(_PER_MILLE))
        return roll >= 1000 - round(probability * 1000)

    def blob(self, max_size: int) -> bytes:
        return self._draw(st.binary(max_size=max_size))


# The request grammar.

# Channels the grammar publishes and subscribes to. The tests watch another
# channel, which no generated request can name.
CHANNELS = ("fuzz", "fuzz.b", "Fuzz:c-d_e")
MAX_BODY = 16 * 1024

METHODS = (
    "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
    "CONNECT", "PRI", "get", "post", "M-SEARCH", "PROPFIND", "QUERY", "SOURCE",
    "GE T", "G\x00T", "", "X" * 40, "\xff\xfe",
)  # fmt: skip
VERSIONS = (
    "HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.2", "HTTP/3",
    "http/1.1", "HTTP/1.1x", "HTTP/11", "HTTP/1.1 x", "HTTP/", "",
)  # fmt: skip
ODD_TARGETS = (
    "*", "", " ", "//healthz", "/healthz/", "/healthz?", "/healthz#frag",
    "/HEALTHZ", "/%68ealthz", "http://localhost/healthz",
    "http://[::1]:1/api/stats", "/api/stream/", "/api/stream/%",
    "/api/stream/%zz", "/api/stream/%ff%fe", "/api/stream/a%2Fb",
    "/api/stream/%00", "/api/stream/" + "a" * 192, "/api/stream/\xc3\xa9",
    "/api/stream/a b", "/api/stream/..", "/api/stream//fuzz",
    "/api/stats?mode=xml&verbose=on", "/api/stats?mode=bogus", "/api/stats?%",
    "/api/stats?mode=%ff", "/api/stats?mode=json&mode=xml", "/api/events?",
    "/api/events?channel=fuzz", "/api/ws?token=x", "/metrics", "/\x00",
    "/" + "a" * (17 * 1024), "/api/publish?x=" + "%" * 100,
)  # fmt: skip
HEADER_NAMES = (
    "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Host",
    "Content-Type", "Content-Length", "Transfer-Encoding",
    "Authorization", "Connection", "Upgrade", "Expect", "Last-Event-ID",
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin", "Cookie",
    "X-Forwarded-For", "", " Host", "Host ", "X Y", "X\x00Y", "X:Y", "\xff\xfe",
    "X-" + "a" * 300, "Content-Length ", "Transfer-Encoding\t",
)  # fmt: skip
HEADER_VALUES = (
    "", "0", "-1", "+5", "0x10", "1 1", "5, 5", "99999999999999999999999",
    "chunked", "Chunked", "gzip", "gzip, chunked", "chunked, gzip", "identity",
    "chunked, chunked", " chunked", "close", "keep-alive", "upgrade",
    "Upgrade, keep-alive", "websocket", "h2c", "100-continue", "100-Continue",
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
    "application/ld+json", "application/jsonx", "text/plain",
    "application/json, text/plain", "Bearer", "Bearer ", "Basic abc",
    "bearer " + PUBLISH_SECRET, "Bearer " + PUBLISH_SECRET + " ",
    "Bearer \xff\xfe", "dGhlIHNhbXBsZSBub25jZQ==", "13", "8", "x-1", "\x00",
    "\x7f", "a\rb", "a\nb", "a\r\n b", "\xc3\xa9", "v" * 9000,
    "permessage-deflate; client_max_window_bits", "permessage-deflate; x=\"",
    "permessage-deflate; server_max_window_bits=8, x", "chat, superchat", ",",
    ";", "a=b=c", '"',
)  # fmt: skip
MUTATION_INSERTS = (
    b"\r\n", b"\r\n\r\n", b"\n", b":", b" ", b"\x00", b"0", b"9" * 20, b"-1",
    b"chunked", b"%", b"\xff", b"HTTP/1.1", b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n", b";", b"\\u0000", b'"', b"{", b"]",
)  # fmt: skip


@dataclass
class Sending:
    """What one connection sends.

    ``data`` holds 1 to 3 requests. ``after_upgrade`` is sent once the
    daemon has switched to WebSocket, if it does. A half-closed connection
    must end promptly; one left open must end by the daemon's own
    timeouts, so that is the rarer case (it takes longer).
    """

    data: bytes
    half_close: bool = True
    after_upgrade: bytes = b""


def raw_exchange(chooser: Chooser) -> Sending:
    """Draw what one connection sends from the request grammar."""
    half_close = not chooser.chance(0.06)
    kinds, requests = zip(
        *(_request(chooser) for _ in range(chooser.number(1, 3))), strict=True
    )
    data = b"".join(requests)
    if chooser.chance(0.2):
        data = _mutate(chooser, data)
    after = _client_frames(chooser) if "ws" in kinds and chooser.chance(0.5) else b""
    return Sending(data, half_close, after)


@st.composite
def raw_exchanges(draw: st.DrawFn) -> Sending:
    """The hypothesis strategy for :func:`raw_exchange`."""
    return raw_exchange(DrawChooser(draw))


def _request(c: Chooser) -> tuple[str, bytes]:
    kind = c.pick(
        ("publish", "subscribe") * 3
        + ("healthz", "stats", "many", "events", "ws", "junk")
    )
    method, target, body, headers = _BUILDERS[kind](c)
    if kind == "junk":
        return kind, body

    if c.chance(0.05):
        method = c.pick(METHODS)
    if c.chance(0.08):
        target = c.pick(ODD_TARGETS)
    version = c.pick(VERSIONS) if c.chance(0.05) else "HTTP/1.1"
    if c.chance(0.8):
        headers.insert(0, ("Host", "localhost"))
    if body or c.chance(0.2):
        framed, body = _frame(c, body)
        headers += framed
    for _ in range(c.pick((0,) * 12 + (1, 1, 2, 4))):
        headers.insert(
            c.number(0, len(headers)), (c.pick(HEADER_NAMES), c.pick(HEADER_VALUES))
        )
    if headers and c.chance(0.1):
        headers.append(c.pick(headers))
    if c.chance(0.02):
        headers += [(f"X-{n}", "v") for n in range(c.number(95, 105))]

    eol = "\n" if c.chance(0.05) else "\r\n"
    line = f"{method} {target}" + (f" {version}" if version else "")
    head = eol.join([line, *(f"{name}: {value}" for name, value in headers)])
    return kind, (head + eol + eol).encode("latin-1") + body


Parts = tuple[str, str, bytes, list[tuple[str, str]]]


def _healthz(c: Chooser) -> Parts:
    return c.pick(("GET", "HEAD")), "/healthz", b"", []


def _stats(c: Chooser) -> Parts:
    query = c.pick(("", "?mode=json", "?mode=xml&verbose=1", "?verbose=yes"))
    return c.pick(("GET", "HEAD")), "/api/stats" + query, b"", _auth(c)


def _publish(c: Chooser) -> Parts:
    channel = c.pick(CHANNELS * 4 + ("", "a/b", "x" * 192, "\u00e9", 1, None))
    message = _json_value(c)
    document: dict[str, object] = {"channel": channel, "message": message}
    if c.chance(0.1):
        document["return_id"] = c.pick((True, False, "yes", 1))
    if c.chance(0.1):
        del document[c.pick(("channel", "message"))]
    headers = [*_auth(c), ("Content-Type", "application/json")]
    return "POST", "/api/publish", _json_body(c, document), headers


def _subscribe(c: Chooser) -> Parts:
    channel = c.pick(CHANNELS)
    document: dict[str, object] = {"token": _token(c, channel)}
    if c.chance(0.2):
        document["envelope"] = c.pick((True, False, "yes"))
    if c.chance(0.2):
        document["last_id"] = c.pick(("00000000-1", "x", "", 5, "ffffffff-99999"))
    target = "/api/stream/" + c.pick((channel, channel, "%66uzz", "other"))
    headers = [("Content-Type", "application/json")]
    return "POST", target, _json_body(c, document), headers


def _many(c: Chooser) -> Parts:
    count = c.pick((1, 2, 0, 33))
    subscriptions: object = [
        {"channel": channel, "token": _token(c, channel)}
        for channel in (CHANNELS * 11)[:count]
    ]
    if c.chance(0.1):
        subscriptions = c.pick(({}, "x", [1], [{"channel": "fuzz"}]))
    document = {"subscriptions": subscriptions}
    headers = [("Content-Type", "application/json")]
    return "POST", "/api/stream", _json_body(c, document), headers


def _events(c: Chooser) -> Parts:
    return "GET", "/api/events?" + _query(c), b"", []


def _ws(c: Chooser) -> Parts:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    if c.chance(0.2):
        del headers[c.number(0, len(headers) - 1)]
    return "GET", "/api/ws?" + _query(c), b"", headers


def _junk(c: Chooser) -> Parts:
    return "", "", c.blob(64), []


_BUILDERS = {
    "healthz": _healthz,
    "stats": _stats,
    "publish": _publish,
    "subscribe": _subscribe,
    "many": _many,
    "events": _events,
    "ws": _ws,
    "junk": _junk,
}


def _auth(c: Chooser) -> list[tuple[str, str]]:
    value = c.pick(
        ("Bearer " + PUBLISH_SECRET,) * 6
        + (
            "Bearer wrong",
            "Bearer ",
            "bearer " + PUBLISH_SECRET,
        )
    )
    return [] if c.chance(0.1) else [("Authorization", value)]


def _token(c: Chooser, channel: str) -> object:
    if not c.chance(0.4):
        return make_token(channel)
    return c.pick(
        (
            make_token("other"),
            make_token(channel, ttl=-10),
            make_token(channel, secret="not-the-secret"),
            make_token(channel)[:-1],
            "",
            "a.b.c",
            None,
            7,
            tokens.mint(channel, SECRET.encode(), U64_MAX),
        )
    )


def _query(c: Chooser) -> str:
    pairs = []
    for channel in CHANNELS[: c.number(0, 2)]:
        pairs.append(f"channel={channel}")
        if c.chance(0.9):
            pairs.append(f"token={_token(c, channel)}")
    if c.chance(0.2):
        pairs.append("last_id=" + c.pick(("00000000-1", "x", "%ff")))
    return "&".join(pairs)


def _json_value(c: Chooser) -> object:
    if c.chance(0.1):
        # Around the 16 KiB body limit.
        return "x" * c.number(MAX_BODY - 100, MAX_BODY + 100)
    return c.pick(
        (
            {"n": 1},
            None,
            "text",
            "\u00e9\u4e2d\U0001f600",
            [1, 2.5, True],
            -0.0,
            2**64,
            {"k": {"k": {"k": []}}},
        )
    )


def _json_body(c: Chooser, document: object) -> bytes:
    text = json.dumps(document)
    shape = c.pick(("plain",) * 12 + ("odd", "odd", "deep", "bytes"))
    if shape == "odd":
        text = c.pick(
            (
                text[: c.number(0, len(text))],
                text.replace(":", " : ", 1),
                text.replace('"channel"', '"\\u0063hannel"'),
                text[:-1] + ', "channel": "fuzz"}',
                text[:-1] + ', "token": "x"}',
                text[:-1] + ', "message": NaN}',
                "\ufeff" + text,
                "[" + text + "]",
                text + "garbage",
                "",
                "null",
            )
        )
    elif shape == "deep":
        depth = c.pick((254, 256, 1024, 1025))
        nested = "[" * depth + "]" * depth
        text = text[:-1] + ', "message": ' + nested + "}"
    elif shape == "bytes":
        return c.blob(40)
    return text.encode("utf-8", "surrogatepass")


def _frame(c: Chooser, body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Framing headers for ``body``, and the body as it goes on the wire."""
    framing = c.pick(
        ("length",) * 8 + ("chunked",) * 4 + ("wrong length", "none", "both")
    )
    if framing == "length":
        return [("Content-Length", str(len(body)))], body
    if framing == "wrong length":
        length = max(0, len(body) + c.pick((-1, 1, -5, 100, MAX_BODY)))
        return [("Content-Length", str(length))], body
    if framing == "none":
        return [], body
    chunked = _chunked(c, body)
    headers = [("Transfer-Encoding", "chunked")]
    if framing == "both":
        headers.append(("Content-Length", str(c.pick((len(body), len(chunked))))))
    return headers, chunked


def _chunked(c: Chooser, body: bytes) -> bytes:
    cuts = sorted(c.number(0, len(body)) for _ in range(c.number(0, 3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b""
    for piece in pieces:
        size = c.pick(("%x",) * 6 + ("%X", "%04x", "%x;ext=1", "%x ")) % len(piece)
        if c.chance(0.02):
            size = c.pick(
                ("-1", "g", "", "ffffffffffffffffff", "%x" % (len(piece) + 1))
            )
        end = b"" if c.chance(0.02) else b"\r\n"
        out += size.encode() + b"\r\n" + piece + end
    if not c.chance(0.05):
        trailer = c.pick((b"",) * 6 + (b"X-Trailer: 1\r\n", b"Content-Length: 5\r\n"))
        out += b"0\r\n" + trailer + b"\r\n"
    return out


def _client_frames(c: Chooser) -> bytes:
    """WebSocket frames as a client sends them (RFC 6455, section 5.2), or not."""
    out = b""
    for _ in range(c.number(1, 3)):
        opcode = c.pick((0x1, 0x9, 0xA, 0x8, 0x2, 0x0, 0x3, 0xB))
        payload = c.pick(
            (b"", b"hi", b"\x03\xe8", b"\x03\xe8bye", b"\x03\xed", b"\x00", b"\xff" * 3)
        )
        if c.chance(0.1):
            payload = bytes(c.pick((125, 126, 4097, 70_000)))
        first = opcode | (0 if c.chance(0.1) else 0x80)
        if c.chance(0.05):
            first |= c.pick((0x10, 0x20, 0x40))

        size = len(payload)
        if c.chance(0.05):
            length = bytes([127]) + (2**63 - 1).to_bytes(8, "big")
        elif size < 126:
            length = bytes([size])
        elif size < 2**16:
            length = bytes([126]) + size.to_bytes(2, "big")
        else:
            length = bytes([127]) + size.to_bytes(8, "big")

        if c.chance(0.05):  # unmasked: a protocol error from a client
            out += bytes([first]) + length + payload
            continue
        key = bytes(c.number(0, 255) for _ in range(4))
        masked = bytes(byte ^ key[at % 4] for at, byte in enumerate(payload))
        out += bytes([first, length[0] | 0x80]) + length[1:] + key + masked
    if c.chance(0.2):
        out = out[: c.number(0, len(out))]
    return out


def _mutate(c: Chooser, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(c.number(1, 4)):
        at = c.number(0, len(buffer))
        operation = c.pick(("insert", "flip", "delete", "truncate", "repeat"))
        if operation == "insert":
            buffer[at:at] = c.pick(MUTATION_INSERTS) if c.chance(0.7) else c.blob(8)
        elif operation == "flip" and at < len(buffer):
            buffer[at] ^= 1 << c.number(0, 7)
        elif operation == "delete":
            del buffer[at : at + c.number(1, 16)]
        elif operation == "truncate":
            del buffer[at:]
        elif operation == "repeat":
            buffer[at:at] = buffer[at : at + c.number(1, 64)]
    return bytes(buffer)


# Sending, and judging what comes back.


@dataclass
class Outcome:
    """What one connection received, and how it ended."""

    received: bytes
    ended: str  # "closed", "reset", "stream" (we stopped reading) or "hang"
    seconds: float


def exchange(port: int, sending: Sending) -> Outcome:
    """Send on a fresh connection and read until the daemon is done.

    A half-closed connection must be closed by the daemon; one left open
    must be answered and then closed by the daemon's timeouts. A stream
    that opens is not read beyond its head. Gives up after ``HANG_SECS``.
    """
    started = time.monotonic()
    deadline = started + HANG_SECS
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_SECS) as sock:
        _send(sock, sending.data)
        if sending.after_upgrade:
            # RFC 6455, section 4.1: frames only once the handshake is answered.
            ended = _read(sock, received, deadline, _stream_started)
            if ended != "stream":
                return Outcome(bytes(received), ended, time.monotonic() - started)
            if _switched(bytes(received)):
                _send(sock, sending.after_upgrade)

        if sending.half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        stop = None if sending.half_close else _stream_started
        ended = _read(sock, received, deadline, stop)
    return Outcome(bytes(received), ended, time.monotonic() - started)


def _send(sock: socket.socket, data: bytes) -> None:
    # A daemon that refused early may reset the connection: then what it
    # answered before is judged all the same.
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _read(
    sock: socket.socket,
    received: bytearray,
    deadline: float,
    stop: Callable[[bytes], bool] | None,
) -> str:
    """Read into ``received`` until the daemon closes or ``stop`` says so."""
    while (remaining := deadline - time.monotonic()) > 0:
        if stop is not None and stop(bytes(received)):
            return "stream"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            break
        if not chunk:
            return "closed"
        received += chunk
    return "hang"


# The daemon under fuzz runs with 1 s request and keep-alive timeouts and
# a 2 s lingering close; an exchange still open after this has hung.
HANG_SECS = 8 * UNIT
FUZZ_ENV = {
    "RPUSHD_HEARTBEAT_SECS": "1",
    "RPUSHD_REQUEST_TIMEOUT_SECS": "1",
    "RPUSHD_KEEPALIVE_TIMEOUT_SECS": "1",
    "RPUSHD_DRAIN_SECS": "0",
    # At debug level the websockets library logs a traceback for every
    # handshake it refuses; our own errors are logged at ERROR anyway.
    "RPUSHD_LOG_LEVEL": "info",
}

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: bool = False


def problems(outcome: Outcome) -> list[str]:
    """Everything wrong with what the daemon sent; empty when all is well.

    Every response must have a well-formed status line and head, none may
    be a 5xx, every 4xx with a body carries a JSON object with an
    ``error`` string, nothing follows a response that announced
    ``Connection: close``, and the connection must end without hanging.
    """
    found = []
    if outcome.ended == "hang":
        found.append(f"no end after {outcome.seconds:.1f} s (hang)")
    try:
        responses = _parse(outcome.received)
    except ValueError as exc:
        return [*found, str(exc)]

    for response in responses:
        if response.status >= 500:
            found.append(f"server error {response.status}")
        if (
            400 <= response.status < 500
            and response.body is not None
            and not _is_error_document(response.body)
        ):
            found.append(f"{response.status} without a json error: {response.body!r}")
    return found


def _is_error_document(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get("error"), str)


def _parse(data: bytes) -> list[_Response]:
    responses = []
    at = 0
    while at < len(data):
        response, at = _parse_one(data, at)
        responses.append(response)
        if response.stream:
            break
        if response.headers.get("connection", "").lower() == "close" and at < len(data):
            raise ValueError(f"bytes after a closing response: {data[at:][:80]!r}")
    return responses


def _parse_one(data: bytes, at: int) -> tuple[_Response, int]:
    line = _STATUS_LINE.match(data, at)
    if line is None:
        raise ValueError(f"unparseable status line: {data[at:][:80]!r}")
    end = data.find(b"\r\n\r\n", line.start())
    if end < 0:
        raise ValueError(f"incomplete response head: {data[at:][:200]!r}")

    response = _Response(int(line.group(1)))
    for raw in data[line.end() : end].split(b"\r\n") if end > line.end() else []:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"malformed header line {raw!r}")
        response.headers[name.lower()] = value.strip()
    at = end + 4

    if response.status < 200 and response.status != 101:
        return response, at  # 100 Continue: the real answer follows
    if response.status in (101, 204):
        response.stream = response.status == 101
        return response, at
    length = response.headers.get("content-length")
    if length is None:
        # Chunked (HTTP/1.1) or close-delimited (HTTP/1.0): a stream body.
        response.stream = True
        return response, at
    if not length.isdigit():
        raise ValueError(f"bad content-length {length!r}")

    # The answer to HEAD has no body: then what follows is the next
    # response or nothing at all.
    rest = data[at:]
    if not rest or rest.startswith(b"HTTP/1."):
        return response, at
    if len(rest) < int(length):
        raise ValueError(f"body shorter than its content-length: {rest!r}")
    response.body = rest[: int(length)]
    return response, at + int(length)


def _switched(data: bytes) -> bool:
    """Whether ``data`` holds a 101 Switching Protocols head."""
    try:
        return any(response.status == 101 for response in _parse(data))
    except ValueError:
        return False


def _stream_started(data: bytes) -> bool:
    """Whether ``data`` holds the head of a response whose body never ends."""
    try:
        responses = _parse(data)
    except ValueError:
        return False
    return bool(responses) and responses[-1].stream


# The daemon's own health.


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_fds(pid: int, baseline: int, timeout: float = 15 * UNIT) -> int:
    """Wait until ``pid`` holds no more than ``baseline`` descriptors.

    Returns the count then, above ``baseline`` only if the time ran out
    (connections linger for a bounded time after their last answer).
    """
    with contextlib.suppress(AssertionError):
        wait_until(lambda: open_fds(pid) <= baseline, timeout, "open fds")
    return open_fds(pid)


def bad_log_lines(lines: Sequence[str]) -> list[str]:
    """The stderr lines that betray a bug: tracebacks and ERROR records."""
    return [
        line
        for line in lines
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line
    ]
