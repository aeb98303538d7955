"""Soak test: an hour of churning subscribers against one daemon.

::

    python bench/soak.py [--minutes 60] [--streams 2000] [--channels 50] ...

The script starts ``python -m rpushd serve`` itself (heartbeat 5 s, idle
channel TTL 60 s, ``RPUSHD_MAX_PENDING_BYTES`` 262144, history on) and
drives it from one asyncio (uvloop) process, on 127.0.0.1 only:

- a steady population of streams spread evenly over the channels, of five
  kinds: the original length-prefixed stream, envelope streams on one
  channel and on two, Server-Sent Events and WebSocket;
- churn: every second some of them leave (clean close, reset, half-close)
  and each is replaced by a stream of the same kind on the same channels;
  about half of the replacements of envelope kinds resume from the last id
  seen (SSE ones through ``last_id`` or ``Last-Event-ID``);
- slow subscribers on 32 channels that stop reading for up to 3 minutes.
  On loopback the kernel alone buffers about 2.8 MB of such a stream, so
  the daemon cuts one off only after some 2 minutes;
- bad requests every second: forged, expired and misdirected tokens,
  garbage, a wrong bearer secret, malformed bodies, abandoned requests;
- steady publishing over keep-alive connections. Each channel is pinned to
  one publish connection with one request in flight, so its messages carry
  sequence numbers that must arrive in order. A few publishes go to
  channels nobody follows, which the idle sweep then drops.

Every ``--sample-secs`` a row shows the daemon's RSS and file descriptors,
its streams, the rates, the churn so far, and the sockets on the daemon's
port that no process owns any more but that still hold unsent data
("orphans": connections it closed behind a peer that stopped reading).

Every healthy stream checks what it receives: on each channel, sequence
numbers must follow each other, across a resume too. A hole, a duplicate, a
gap envelope, a stream ended by the daemon or one silent for three
heartbeats is a failure.

Phases: connect the population; warm up under the full load, so that
history, buffers and the allocator reach their steady state; quiesce (stop
churn, slow and bad clients, restore the population, let it settle) and
take the baseline; churn for ``--minutes``; quiesce the same way and take
the end figures. Baseline and end are measured in the same state, with the
publishers still running.

The exit status is 0 only if the daemon's RSS grew by at most
``--max-rss-growth`` percent, it holds as many file descriptors as at the
baseline, its log has no Traceback and no ERROR line, it neither crashed
nor failed to stop cleanly, and healthy subscribers lost nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http.client
import os
import platform
import random
import resource
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import uvloop
from loadgen import raise_fd_limit
from servers import cpu_seconds, free_port, rss_bytes
from wire import ChunkDecoder, ResponseReader, WireError

import rpushd
from rpushd import tokens

HOST = "127.0.0.1"
MESSAGE_SIZE = 100
CHANNEL_PREFIX = "soak-"
MAX_FDS = 20_000
"""Neither process may hold more open files than this."""
READY_TIMEOUT = 20.0
OPEN_TIMEOUT = 10.0
LEAVE_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0
SLOW_RCVBUF = 4096
SILENT_HEARTBEATS = 3
"""A healthy stream that hears nothing for this many heartbeats is stalled."""

# Kinds of stream.
FRAMES = "frames"
ENVELOPES = "envelopes"
MANY = "many"
EVENTS = "sse"
WEBSOCKET = "ws"
MIX = (FRAMES,) * 3 + (ENVELOPES,) * 2 + (MANY,) + (EVENTS,) * 2 + (WEBSOCKET,) * 2
"""Kinds of the steady population, in proportion: 30 % original streams."""
RESUMABLE = frozenset({ENVELOPES, MANY, EVENTS, WEBSOCKET})
SLOW_KINDS = (MANY, EVENTS, WEBSOCKET)
"""Kinds that follow many channels on one connection, so fall behind sooner."""
LEAVE_METHODS = ("close", "reset", "half-close")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_TEXT, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x8, 0x9, 0xA
LINGER_ABORT = struct.pack("ii", 1, 0)


class SoakError(Exception):
    """The soak could not run (the daemon did not start, a limit is too low)."""


class OpenFailed(Exception):
    """A subscribe request was not answered with an open stream."""


# Settings.


@dataclass(frozen=True)
class Settings:
    """What the soak does; see ``--help`` for each."""

    minutes: float
    streams: int
    channels: int
    churn: int
    publish_rate: float
    idle_publish_rate: float
    publishers: int
    slow_every: float
    slow_channels: int
    slow_secs: float
    bad_rate: int
    resume_share: float
    warmup_secs: float
    settle_secs: float
    sample_secs: float
    heartbeat_secs: int
    idle_ttl_secs: int
    max_pending_bytes: int
    max_rss_growth: float
    seed: int


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(
        description="Churn subscribers against one rpushd for a while, then "
        "check that its memory and file descriptors came back."
    )
    add = parser.add_argument
    add("--minutes", type=float, default=60, help="length of the churn phase")
    add("--streams", type=int, default=2000, help="steady population")
    add("--channels", type=int, default=50, help="channels they spread over")
    add("--churn", type=int, default=50, help="streams replaced every second")
    add("--publish-rate", type=float, default=200, help="messages/s, all channels")
    add(
        "--idle-publish-rate",
        type=float,
        default=2,
        help="messages/s to channels nobody follows (swept later)",
    )
    add("--publishers", type=int, default=4, help="keep-alive publish connections")
    add("--slow-every", type=float, default=10, help="seconds between slow clients")
    add("--slow-channels", type=int, default=32, help="channels a slow client follows")
    add(
        "--slow-secs",
        type=float,
        default=180,
        help="how long a slow client stalls (the kernel alone buffers ~2.8 MB "
        "of its stream on loopback, so the daemon cuts it off after ~2 min)",
    )
    add("--bad-rate", type=int, default=10, help="bad requests every second")
    add("--resume-share", type=float, default=0.5, help="replacements that resume")
    add("--warmup", type=float, default=240, help="seconds of full load before")
    add("--settle", type=float, default=15, help="seconds of calm before measuring")
    add("--sample-secs", type=float, default=10, help="seconds between samples")
    add("--heartbeat", type=int, default=5, help="RPUSHD_HEARTBEAT_SECS")
    add("--idle-ttl", type=int, default=60, help="RPUSHD_CHANNEL_IDLE_TTL_SECS")
    add("--max-pending", type=int, default=262144, help="RPUSHD_MAX_PENDING_BYTES")
    add("--max-rss-growth", type=float, default=5.0, help="percent allowed")
    add("--seed", type=int, default=1, help="seed of the random choices")
    args = parser.parse_args(argv)
    return Settings(
        minutes=args.minutes,
        streams=args.streams,
        channels=args.channels,
        churn=args.churn,
        publish_rate=args.publish_rate,
        idle_publish_rate=args.idle_publish_rate,
        publishers=args.publishers,
        slow_every=args.slow_every,
        slow_channels=min(args.slow_channels, args.channels),
        slow_secs=args.slow_secs,
        bad_rate=args.bad_rate,
        resume_share=args.resume_share,
        warmup_secs=args.warmup,
        settle_secs=args.settle,
        sample_secs=args.sample_secs,
        heartbeat_secs=args.heartbeat,
        idle_ttl_secs=args.idle_ttl,
        max_pending_bytes=args.max_pending,
        max_rss_growth=args.max_rss_growth,
        seed=args.seed,
    )


def say(text: str = "") -> None:
    print(text, flush=True)


def channel_name(index: int) -> str:
    return f"{CHANNEL_PREFIX}{index:03d}"


def soak_message(channel: int, seq: int) -> bytes:
    """Message ``seq`` of channel ``channel``: compact JSON, 100 bytes."""
    head = b'{"ch":%d,"seq":%d,"pad":"' % (channel, seq)
    return head + b"x" * (MESSAGE_SIZE - len(head) - 2) + b'"}'


def http_request(
    method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    fields = {"Host": HOST, **(headers or {})}
    if body or method == "POST":
        fields.setdefault("Content-Type", "application/json")
        fields.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def fd_count(pid: int | str) -> int:
    """Open file descriptors of process ``pid`` (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def orphaned_sockets(port: int) -> tuple[int, int]:
    """Sockets on ``port`` that no process owns any more, and their unsent bytes.

    TIME-WAIT aside, these are connections the daemon closed while data was
    still queued in the kernel: FIN-WAIT-1 behind a peer that stopped
    reading keeps its whole send buffer until the kernel gives up on it.
    """
    count = unsent = 0
    local = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            time_wait = fields[3] == "06"
            if fields[1].endswith(local) and fields[9] == "0" and not time_wait:
                count += 1
                unsent += int(fields[4].partition(":")[0], 16)
    return count, unsent


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# The daemon under test.


class Daemon:
    """One ``python -m rpushd serve``, its secrets, its log."""

    def __init__(self, settings: Settings) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.publish_secret = secrets.token_urlsafe(32)
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="rpushd-soak-"))
        self.log = self.workdir / "rpushd.log"
        self.env = {
            "RPUSHD_LISTEN": f"{HOST}:{self.port}",
            "RPUSHD_HEARTBEAT_SECS": str(settings.heartbeat_secs),
            "RPUSHD_CHANNEL_IDLE_TTL_SECS": str(settings.idle_ttl_secs),
            "RPUSHD_MAX_PENDING_BYTES": str(settings.max_pending_bytes),
            "RPUSHD_HISTORY_SIZE": "100",
            # Shorter than the idle TTL, so that expiry runs before the sweep
            # on channels nobody follows; the count bounds the busy ones.
            "RPUSHD_HISTORY_TTL_SECS": "30",
            "RPUSHD_LOG_LEVEL": "info",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.log_counts: Counter[str] = Counter()
        self.log_problems: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "RPUSHD_SECRET": self.secret,
            "RPUSHD_PUBLISH_SECRET": self.publish_secret,
        }
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rpushd", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll /healthz until it answers 200."""
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=1)
                connection.request("GET", "/healthz")
                status = connection.getresponse().status
                connection.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise SoakError(f"the daemon did not become ready:\n{tail}")

    def token(self, channel: str, expires_at: int) -> str:
        return tokens.mint(channel, self.secret.encode(), expires_at)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def fds(self) -> int:
        return fd_count(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def scan_log(self) -> None:
        """Count the log's new lines by level; keep Tracebacks and ERRORs."""
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except OSError:
            return
        complete = data.rfind(b"\n") + 1
        self._log_offset += complete
        for line in data[:complete].decode(errors="replace").splitlines():
            # "DATE TIME LEVEL LOGGER: MESSAGE" (RPUSHD_LOG_FORMAT=text)
            parts = line.split(" ", 4)
            level = parts[2] if len(parts) > 3 and parts[2].isupper() else ""
            if level:
                self.log_counts[f"{level} {parts[3].rstrip(':')}"] += 1
            else:
                self.log_counts["other"] += 1
            if "Traceback" in line or level in ("ERROR", "CRITICAL"):
                self.log_problems.append(line)

    def terminate(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> int | None:
        """SIGTERM, wait; return the exit status (None: had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode


# What streams carry, decoded: sans-I/O readers, one per kind of stream.


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a stream carried.

    ``kind`` is message, hello, gap, close, heartbeat, ping or end (the
    chunked body ended). A message has the ``channel`` index and ``seq``
    from its payload, and ``position`` (the SEQ of its id) if enveloped; a
    hello has ``position``; gap and close have a ``reason``.
    """

    kind: str
    channel: int = -1
    seq: int = 0
    position: int = 0
    reason: str = ""


HEARTBEAT = Item("heartbeat")
PING = Item("ping")
END = Item("end")


def id_position(item_id: str) -> int:
    return int(item_id.rpartition("-")[2])


def payload_item(payload: bytes) -> Item:
    message = orjson.loads(payload)
    return Item("message", message["ch"], message["seq"])


def envelope_item(data: bytes) -> Item:
    envelope = orjson.loads(data)
    kind = envelope["type"]
    if kind == "message":
        message = envelope["message"]
        position = id_position(envelope["id"])
        return Item("message", message["ch"], message["seq"], position)
    if kind == "hello":
        return Item("hello", position=id_position(envelope["last_id"]))
    if kind == "gap":
        return Item("gap", reason=f"{envelope['channel']}: {envelope['reason']}")
    return Item(kind, reason=str(envelope.get("reason", "")))


class FramesReader:
    """A chunked body of length-prefixed frames, one frame per chunk."""

    def __init__(self, *, envelope: bool) -> None:
        self._chunks = ChunkDecoder()
        self._decode = envelope_item if envelope else payload_item

    def feed(self, data: bytes) -> list[Item]:
        items = []
        for chunk in self._chunks.feed(data):
            size = int.from_bytes(chunk[:2], "big")
            if size != len(chunk) - 2:
                raise WireError(f"frame of {size} bytes in a chunk of {len(chunk)}")
            items.append(self._decode(chunk[2:]) if size else HEARTBEAT)
        if self._chunks.ended:
            items.append(END)
        return items


class EventsReader:
    """A chunked ``text/event-stream`` body."""

    def __init__(self) -> None:
        self._chunks = ChunkDecoder()
        self._text = b""

    def feed(self, data: bytes) -> list[Item]:
        for chunk in self._chunks.feed(data):
            self._text += chunk
        *blocks, self._text = self._text.split(b"\n\n")
        items = []
        for block in blocks:
            if block.startswith(b":"):
                items.append(HEARTBEAT)
                continue
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    items.append(envelope_item(line[6:]))
        if self._chunks.ended:
            items.append(END)
        return items


class WebSocketReader:
    """Unmasked frames from the daemon (RFC 6455, section 5.2)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Item]:
        buffer = self._buffer
        buffer += data
        items = []
        while len(buffer) >= 2:
            if buffer[0] & 0xF0 != 0x80 or buffer[1] & 0x80:
                raise WireError(f"unexpected websocket frame {bytes(buffer[:2])!r}")
            size, start = buffer[1] & 0x7F, 2
            if size >= 126:
                start = 4 if size == 126 else 10
                if len(buffer) < start:
                    break
                size = int.from_bytes(buffer[2:start], "big")
            if len(buffer) < start + size:
                break
            opcode = buffer[0] & 0x0F
            payload = bytes(buffer[start : start + size])
            del buffer[: start + size]
            if opcode == WS_TEXT:
                items.append(envelope_item(payload))
            elif opcode == WS_PING:
                items.append(PING)
            elif opcode == WS_CLOSE:
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                items.append(Item("close", reason=f"websocket {code}"))
        return items


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A short masked frame, as a client must send it."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def websocket_accept(key: str) -> bytes:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest())


# Tallies.


@dataclass
class Tally:
    """Everything counted while the soak runs."""

    deliveries: int = 0
    slow_deliveries: int = 0
    published: int = 0
    publish_errors: int = 0
    opened: Counter[str] = field(default_factory=Counter)
    left: Counter[str] = field(default_factory=Counter)
    resumed: Counter[str] = field(default_factory=Counter)
    open_failures: int = 0
    lost: int = 0
    duplicates: int = 0
    gaps: int = 0
    unexpected_closes: int = 0
    stalled: int = 0
    protocol_errors: int = 0
    slow_started: int = 0
    slow_cut: int = 0
    slow_goodbyes: int = 0
    slow_survived: int = 0
    slow_ended_early: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    bad_surprises: Counter[str] = field(default_factory=Counter)
    task_errors: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Keep the first few descriptions of what went wrong."""
        if len(self.examples) < 20:
            self.examples.append(text)


# Subscribers.


class Subscriber(asyncio.Protocol):
    """One stream of any kind, checking what it receives.

    ``last_seq`` maps a channel index to the last sequence number seen on
    it; a stream that resumes starts from its predecessor's, so a resume
    that loses or repeats a message is caught like any other.
    """

    def __init__(
        self,
        soak: Soak,
        kind: str,
        channels: tuple[int, ...],
        request: bytes,
        *,
        slot: int = -1,
        slow: bool = False,
        last_seq: dict[int, int] | None = None,
        position: int = 0,
        ws_key: str = "",
    ) -> None:
        self.soak = soak
        self.tally = soak.tally
        self.kind = kind
        self.channels = channels
        self.slot = slot
        self.slow = slow
        self.last_seq = dict(last_seq or {})
        self.position = position
        self.leaving = False
        self.farewell = ""
        self.heard_at = time.monotonic()
        self._request = request
        self._ws_key = ws_key
        self._head: bytearray | None = bytearray()
        self._reader: FramesReader | EventsReader | WebSocketReader
        if kind == WEBSOCKET:
            self._reader = WebSocketReader()
        elif kind == EVENTS:
            self._reader = EventsReader()
        else:
            self._reader = FramesReader(envelope=kind != FRAMES)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    @property
    def last_id(self) -> str:
        return f"{self.soak.epoch}-{self.position}"

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.heard_at = time.monotonic()
        if self._head is not None:
            rest = self._take_head(data)
            if rest is None:
                return
            data = rest
        try:
            items = self._reader.feed(data)
        except (WireError, ValueError, KeyError, TypeError) as exc:
            self.tally.protocol_errors += 1
            self.tally.note(f"{self.kind}: cannot decode the stream: {exc}")
            self.abort()
            return
        for item in items:
            self._take(item)

    def eof_received(self) -> bool:
        self._ended("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if exc is not None:
            self._ended(type(exc).__name__)
        if not self.opened.done():
            reason = self.farewell or "closed before it opened"
            self.opened.set_exception(OpenFailed(reason))
        self.closed.set_result(None)
        self.soak.subscriber_ended(self)

    # What arrives.

    def _take_head(self, data: bytes) -> bytes | None:
        assert self._head is not None
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return None
        head, rest = bytes(self._head[:end]), bytes(self._head[end + 4 :])
        self._head = None

        status = int(head[9:12])
        expected = 101 if self.kind == WEBSOCKET else 200
        if status != expected:
            self._refused(f"status {status}: {rest[:80]!r}")
            return None
        if self.kind == WEBSOCKET:
            accept = b"sec-websocket-accept: " + websocket_accept(self._ws_key)
            if accept.lower() not in head.lower():
                self._refused("wrong Sec-WebSocket-Accept")
                return None
        return rest

    def _take(self, item: Item) -> None:
        kind = item.kind
        if kind == "message":
            self._message(item)
        elif kind in ("heartbeat", "hello"):
            self.position = max(self.position, item.position)
            if not self.opened.done():
                self.opened.set_result(None)
        elif kind == "ping":
            if self.transport is not None:
                self.transport.write(client_frame(WS_PONG))
        elif kind == "gap":
            if not self.slow:
                self.tally.gaps += 1
                self.tally.note(f"{self.kind}: gap on {item.reason}")
        else:
            self._ended(f"{kind} {item.reason}".strip())

    def _message(self, item: Item) -> None:
        self.position = max(self.position, item.position)
        if self.slow:
            self.tally.slow_deliveries += 1
            return
        self.tally.deliveries += 1

        last = self.last_seq.get(item.channel)
        seq = item.seq
        if last is not None and seq != last + 1:
            if seq <= last:
                self.tally.duplicates += 1
            else:
                self.tally.lost += seq - last - 1
            self.tally.note(
                f"{self.kind} on {channel_name(item.channel)}: seq {seq} after {last}"
            )
        if last is None or seq > last:
            self.last_seq[item.channel] = seq

    # Ending.

    def _ended(self, how: str) -> None:
        """Add to :attr:`farewell`, which lists every sign of the end."""
        self.farewell = f"{self.farewell}, {how}" if self.farewell else how

    def _refused(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(OpenFailed(reason))
        self.abort()

    def abort(self) -> None:
        """Reset the connection (RST, not FIN)."""
        self.leaving = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
            self.transport.abort()

    async def leave(self, method: str) -> None:
        """Disconnect by ``method`` (close, reset, half-close); wait till gone."""
        self.leaving = True
        transport = self.transport
        if transport is None:
            return
        if method == "reset":
            self.abort()
        elif method == "half-close":
            transport.write_eof()
        elif self.kind == WEBSOCKET:
            transport.write(client_frame(WS_CLOSE, (1000).to_bytes(2, "big")))
        else:
            transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), LEAVE_TIMEOUT)
        except TimeoutError:
            self.tally.note(f"{self.kind}: {method} took over {LEAVE_TIMEOUT} s")
            self.abort()


# Publishers.


class Publisher(asyncio.Protocol):
    """A keep-alive publish connection with one request in flight."""

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.queue: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self._busy = False
        self._reader = ResponseReader()

    def send(self, request: bytes) -> None:
        self.queue.append(request)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        if self.queue and self.transport is not None:
            self._busy = True
            self.transport.write(self.queue.popleft())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        tally = self.soak.tally
        for status in self._reader.feed(data):
            self._busy = False
            if status == 204:
                tally.published += 1
            else:
                tally.publish_errors += 1
                tally.note(f"publish answered {status}")
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.soak.closing:
            self.soak.tally.publish_errors += 1 + len(self.queue)
            self.soak.tally.note(f"publish connection lost: {exc}")


# The soak itself.


@dataclass
class Sample:
    """One row of the table."""

    elapsed: float
    phase: str
    rss: int
    fds: int
    streams: int
    open_connections: int
    publishes_per_s: float
    deliveries_per_s: float
    churned: int
    slow_cut: int
    bad: int
    client_cpu: float
    daemon_cpu: float
    client_fds: int
    orphans: int
    orphaned_bytes: int


@dataclass
class Measurement:
    """The daemon's figures in one of the calm states."""

    label: str
    rss: int
    fds: int
    streams: int
    open_connections: int
    client_fds: int
    fds_readings: list[int]
    orphans: int


class Soak:
    """Drives the whole soak against one :class:`Daemon`."""

    def __init__(self, settings: Settings, daemon: Daemon) -> None:
        self.settings = settings
        self.daemon = daemon
        self.tally = Tally()
        self.rng = random.Random(settings.seed)
        self.epoch = ""
        self.population: list[Subscriber | None] = [None] * settings.streams
        self.busy: set[int] = set()
        self.publishers: list[Publisher] = []
        self.seq = [0] * settings.channels
        self.closing = False
        self.churning = False
        self.publishing = True
        self.phase = "connect"
        self.samples: list[Sample] = []
        self.measurements: dict[str, Measurement] = {}
        self.farewells: Counter[str] = Counter()
        self.max_backlog = 0
        self.aborted = ""
        self.expires_at = int(time.time()) + int(settings.minutes * 60) + 7200
        # Background loops run until the end; transient tasks (one churn,
        # one slow or bad client) are awaited when the soak quiesces.
        self._background: list[asyncio.Task[None]] = []
        self._load: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._stats: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._started = time.monotonic()
        self._publish_heads = [
            self._publish_head(channel_name(c)) for c in range(settings.channels)
        ]
        self._leave_count = 0
        self._bad_count = 0
        self._calm = asyncio.Event()

    # Phases.

    async def run(self) -> None:
        settings = self.settings
        self.epoch = await self.fetch_epoch()
        await self.open_publishers()
        self._start_background(self.publish_forever())
        self._start_background(self.publish_idle_channels())

        say(f"connecting {settings.streams} streams")
        await self.connect_population()
        await asyncio.sleep(settings.settle_secs)
        await self.measure("connected")
        self._start_background(self.sample_forever())

        self.phase = "warm-up"
        say(f"warming up under full load for {settings.warmup_secs:.0f} s")
        self.start_load()
        await asyncio.sleep(settings.warmup_secs)
        await self.quiesce()
        await self.measure("baseline")

        self.phase = "churn"
        say(f"churning for {settings.minutes:g} min")
        self.start_load()
        await asyncio.sleep(settings.minutes * 60)
        await self.quiesce()
        await self.measure("end")

    def start_load(self) -> None:
        self.churning = True
        self._calm.clear()
        self._load = [
            asyncio.create_task(self.churn_forever()),
            asyncio.create_task(self.slow_forever()),
            asyncio.create_task(self.bad_forever()),
        ]

    async def quiesce(self) -> None:
        """Stop churn, slow and bad clients; restore the population; settle."""
        self.phase = "settle"
        say("quiescing: churn, slow and bad clients stop")
        self.churning = False
        self._calm.set()
        await asyncio.gather(*self._load)
        while self._inflight:
            await asyncio.wait(self._inflight)
        await self.restore_population()
        await asyncio.sleep(self.settings.settle_secs)

    async def measure(self, label: str) -> None:
        """Take the figures once the daemon holds only the population."""
        expected = self.settings.streams + self.settings.publishers + 1
        deadline = time.monotonic() + 30
        stats = await self.stats()
        while stats["open_connections"] != expected and time.monotonic() < deadline:
            await asyncio.sleep(1)
            stats = await self.stats()

        if stats["open_connections"] != expected:
            self.tally.note(
                f"{label}: {stats['open_connections']} connections, not {expected}"
            )
        readings = []
        rss = []
        for _ in range(3):
            readings.append(self.daemon.fds())
            rss.append(self.daemon.rss())
            await asyncio.sleep(1)
        stats = await self.stats()
        measurement = Measurement(
            label,
            int(statistics.median(rss)),
            readings[-1],
            stats["active_stream_connections"],
            stats["open_connections"],
            fd_count("self"),
            readings,
            orphaned_sockets(self.daemon.port)[0],
        )
        self.measurements[label] = measurement
        say(
            f"{label}: RSS {measurement.rss / 2**20:.1f} MiB, "
            f"fds {measurement.fds} {readings}, "
            f"streams {measurement.streams}, "
            f"connections {measurement.open_connections} (expected {expected})"
        )

    # The steady population.

    async def connect_population(self) -> None:
        gate = asyncio.Semaphore(100)

        async def connect(slot: int) -> None:
            kind, channels = self.slot_plan(slot)
            async with gate:
                await self.fill(slot, kind, channels)

        await asyncio.gather(*(connect(s) for s in range(self.settings.streams)))

    def slot_plan(self, slot: int) -> tuple[str, tuple[int, ...]]:
        """Kind and channels of slot ``slot``: kinds mixed on every channel."""
        count = self.settings.channels
        channel = slot % count
        kind = MIX[(slot // count) % len(MIX)]
        if kind == MANY:
            return kind, (channel, (channel + 1) % count)
        return kind, (channel,)

    async def fill(
        self,
        slot: int,
        kind: str,
        channels: tuple[int, ...],
        predecessor: Subscriber | None = None,
    ) -> None:
        """Open a stream for ``slot``, trying three times."""
        for attempt in range(3):
            try:
                self.population[slot] = await self.subscribe(
                    kind, channels, slot=slot, predecessor=predecessor
                )
                return
            except (OSError, OpenFailed, TimeoutError) as exc:
                self.tally.open_failures += 1
                self.tally.note(f"{kind} could not open: {exc!r}")
                await asyncio.sleep(1 + attempt)
        self.population[slot] = None

    async def restore_population(self) -> None:
        missing = [
            slot
            for slot, sub in enumerate(self.population)
            if sub is None or sub.closed.done()
        ]
        for slot in missing:
            kind, channels = self.slot_plan(slot)
            await self.fill(slot, kind, channels)

    def subscriber_ended(self, sub: Subscriber) -> None:
        """A stream closed: by us, or unexpectedly by the daemon."""
        if self.closing:
            self.farewells[sub.farewell or "none"] += 1
        if sub.leaving or sub.slow or self.closing or not sub.opened.done():
            return
        self.tally.unexpected_closes += 1
        self.tally.note(f"{sub.kind} stream ended by the daemon: {sub.farewell}")
        if self.population[sub.slot] is sub and sub.slot not in self.busy:
            self.busy.add(sub.slot)
            self._spawn(self.refill(sub.slot))

    async def refill(self, slot: int) -> None:
        try:
            kind, channels = self.slot_plan(slot)
            await self.fill(slot, kind, channels)
        finally:
            self.busy.discard(slot)

    # Opening streams.

    async def subscribe(
        self,
        kind: str,
        channels: tuple[int, ...],
        *,
        slot: int = -1,
        slow: bool = False,
        predecessor: Subscriber | None = None,
    ) -> Subscriber:
        """Open a stream and wait for its first heartbeat or hello."""
        names = [channel_name(c) for c in channels]
        last_id = predecessor.last_id if predecessor else None
        ws_key = base64.b64encode(os.urandom(16)).decode()
        request = self.subscribe_request(kind, names, last_id, ws_key)

        loop = asyncio.get_running_loop()
        sock = socket.socket()
        try:
            if slow:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, self.daemon.port))
            _, sub = await loop.create_connection(
                lambda: Subscriber(
                    self,
                    kind,
                    channels,
                    request,
                    slot=slot,
                    slow=slow,
                    last_seq=predecessor.last_seq if predecessor else None,
                    position=predecessor.position if predecessor else 0,
                    ws_key=ws_key,
                ),
                sock=sock,
            )
        except BaseException:
            sock.close()
            raise

        try:
            await asyncio.wait_for(asyncio.shield(sub.opened), OPEN_TIMEOUT)
        except BaseException:
            sub.abort()
            raise
        if slow and sub.transport is not None:
            sub.transport.pause_reading()
        self.tally.opened[kind] += 1
        if predecessor:
            self.tally.resumed[kind] += 1
        return sub

    def subscribe_request(
        self, kind: str, names: list[str], last_id: str | None, ws_key: str
    ) -> bytes:
        token = [self.daemon.token(name, self.expires_at) for name in names]
        body: dict[str, Any]
        if kind == FRAMES:
            body = {"token": token[0]}
            return http_request("POST", f"/api/stream/{names[0]}", orjson.dumps(body))
        if kind == ENVELOPES:
            body = {"token": token[0], "envelope": True}
            if last_id:
                body["last_id"] = last_id
            return http_request("POST", f"/api/stream/{names[0]}", orjson.dumps(body))
        if kind == MANY:
            subscriptions = [
                {"channel": name, "token": value}
                for name, value in zip(names, token, strict=True)
            ]
            body = {"subscriptions": subscriptions}
            if last_id:
                body["last_id"] = last_id
            return http_request("POST", "/api/stream", orjson.dumps(body))

        pairs = []
        for name, value in zip(names, token, strict=True):
            pairs += [("channel", name), ("token", value)]
        headers = {}
        if last_id and kind == EVENTS and self.rng.random() < 0.5:
            headers["Last-Event-ID"] = last_id
        elif last_id:
            pairs.append(("last_id", last_id))
        if kind == EVENTS:
            headers["Accept"] = "text/event-stream"
            return http_request("GET", "/api/events?" + urlencode(pairs), b"", headers)
        headers.update(
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": ws_key,
                "Sec-WebSocket-Version": "13",
            }
        )
        return http_request("GET", "/api/ws?" + urlencode(pairs), b"", headers)

    # Churn, slow clients and bad requests.

    async def churn_forever(self) -> None:
        await self._every(1.0, self._churn_once)

    def _churn_once(self) -> None:
        streams = self.settings.streams
        candidates = self.rng.sample(
            range(streams), k=min(streams, 4 * self.settings.churn)
        )
        live = [
            slot
            for slot in candidates
            if slot not in self.busy
            and (sub := self.population[slot]) is not None
            and not sub.closed.done()
        ]
        for slot in live[: self.settings.churn]:
            method = LEAVE_METHODS[self._leave_count % len(LEAVE_METHODS)]
            self._leave_count += 1
            self.busy.add(slot)
            self._spawn(self.replace(slot, method))

    async def replace(self, slot: int, method: str) -> None:
        """One churn: the stream in ``slot`` leaves; a new one takes its place."""
        try:
            old = self.population[slot]
            assert old is not None
            await old.leave(method)
            self.tally.left[method] += 1
            resume = (
                old.kind in RESUMABLE
                and old.position > 0
                and self.rng.random() < self.settings.resume_share
            )
            await self.fill(slot, old.kind, old.channels, old if resume else None)
        finally:
            self.busy.discard(slot)

    async def slow_forever(self) -> None:
        await self._every(self.settings.slow_every, self._slow_once)

    def _slow_once(self) -> None:
        kind = SLOW_KINDS[self.tally.slow_started % len(SLOW_KINDS)]
        count = self.settings.slow_channels
        channels = tuple(self.rng.sample(range(self.settings.channels), k=count))
        self.tally.slow_started += 1
        self._spawn(self.slow_subscriber(kind, channels))

    async def slow_subscriber(self, kind: str, channels: tuple[int, ...]) -> None:
        """Stop reading for a while, then see whether the daemon cut us off.

        When the soak quiesces first, the stall ends early: the client reads
        again and, if the daemon has not cut it off, resets the connection.
        """
        try:
            sub = await self.subscribe(kind, channels, slow=True)
        except (OSError, OpenFailed, TimeoutError) as exc:
            self.tally.open_failures += 1
            self.tally.note(f"slow {kind} could not open: {exc!r}")
            return
        calm = asyncio.create_task(self._calm.wait())
        await asyncio.wait({calm}, timeout=self.settings.slow_secs)
        calm.cancel()
        early = self._calm.is_set()

        if sub.transport is not None:
            sub.transport.resume_reading()
        try:
            await asyncio.wait_for(asyncio.shield(sub.closed), 5 if early else 10)
        except TimeoutError:
            sub.abort()
            if early:
                self.tally.slow_ended_early += 1
            else:
                self.tally.slow_survived += 1
            return
        self.tally.slow_cut += 1
        if "slow" in sub.farewell or "4008" in sub.farewell:
            self.tally.slow_goodbyes += 1

    async def bad_forever(self) -> None:
        await self._every(1.0, self._bad_once)

    def _bad_once(self) -> None:
        cases = self.bad_requests()
        for _ in range(self.settings.bad_rate):
            name, data, expected = cases[self._bad_count % len(cases)]
            self._bad_count += 1
            self._spawn(self.bad_request(name, data, expected))

    def bad_requests(self) -> list[tuple[str, bytes, int]]:
        """``(name, request bytes, expected status)``.

        Status 4001 stands for a WebSocket handshake closed with 4001, and 0
        for a request abandoned without waiting for an answer.
        """
        channel = channel_name(self.rng.randrange(self.settings.channels))
        now = int(time.time())
        good = self.daemon.token(channel, now + 300)
        forged = tokens.mint(channel, b"not-the-secret" * 3, now + 300)
        expired = self.daemon.token(channel, now - 60)
        elsewhere = self.daemon.token("soak-elsewhere", now + 300)
        stream = f"/api/stream/{channel}"

        def body(token: str) -> bytes:
            return orjson.dumps({"token": token})

        upgrade = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        query = urlencode({"channel": channel, "token": forged})
        partial = f"POST {stream} HTTP/1.1\r\nHost: {HOST}\r\n".encode()
        return [
            ("forged token", http_request("POST", stream, body(forged)), 401),
            ("expired token", http_request("POST", stream, body(expired)), 401),
            ("other channel", http_request("POST", stream, body(elsewhere)), 401),
            ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
            ("sse forged", http_request("GET", f"/api/events?{query}"), 401),
            ("ws forged", http_request("GET", f"/api/ws?{query}", b"", upgrade), 4001),
            (
                "wrong bearer",
                http_request(
                    "POST",
                    "/api/publish",
                    b'{"channel":"x","message":1}',
                    {"Authorization": "Bearer nope"},
                ),
                401,
            ),
            (
                "bad channel",
                http_request("POST", "/api/stream/no!such", body(good)),
                400,
            ),
            ("bad json", http_request("POST", stream, b'{"token": '), 400),
            (
                "too large",
                http_request("POST", stream, b"", {"Content-Length": "100000"}),
                413,
            ),
            ("not found", http_request("GET", "/nowhere"), 404),
            ("abandoned", partial, 0),
            ("unfinished", partial, 408),
        ]

    async def bad_request(self, name: str, data: bytes, expected: int) -> None:
        """Send one bad request; its answer must have the expected status."""
        self.tally.bad[name] += 1
        reader, writer = await asyncio.open_connection(HOST, self.daemon.port)
        try:
            writer.write(data)
            if expected == 0:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
                return
            # Refusals after the body keep the connection alive: read one
            # answer by its length, then close.
            status, body = await asyncio.wait_for(read_response(reader), 30)
            if status == 101:
                close = await asyncio.wait_for(reader.readexactly(4), 30)
                status = int.from_bytes(close[2:], "big") if close[0] == 0x88 else 0
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            status, body = 0, repr(exc).encode()
        finally:
            writer.close()
        if status != expected:
            self.tally.bad_surprises[f"{name}: {status}"] += 1
            self.tally.note(f"bad request {name!r} answered {status}: {body[:60]!r}")

    # Publishing.

    async def open_publishers(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.settings.publishers):
            _, publisher = await loop.create_connection(
                lambda: Publisher(self), HOST, self.daemon.port
            )
            self.publishers.append(publisher)

    def _publish_head(self, channel: str) -> bytes:
        before = b'{"channel":"%s","message":' % channel.encode()
        head = http_request(
            "POST",
            "/api/publish",
            b"",
            {
                "Authorization": f"Bearer {self.daemon.publish_secret}",
                "Content-Length": str(len(before) + MESSAGE_SIZE + 1),
            },
        )
        return head + before

    async def publish_forever(self) -> None:
        """Publish at a steady rate, round-robin over the channels."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        rate = self.settings.publish_rate
        count = self.settings.channels
        while self.publishing:
            due = int((loop.time() - start) * rate)
            while sent < due:
                channel = sent % count
                self.seq[channel] += 1
                message = soak_message(channel, self.seq[channel])
                request = self._publish_heads[channel] + message + b"}"
                self.publishers[channel % len(self.publishers)].send(request)
                sent += 1
            await asyncio.sleep(0.01)

    async def publish_idle_channels(self) -> None:
        """Publish to channels nobody follows; a new one every 10 s."""
        if self.settings.idle_publish_rate <= 0:
            return
        loop = asyncio.get_running_loop()
        while self.publishing:
            name = f"soak-idle-{int(loop.time() - self._started) // 10}"
            request = http_request(
                "POST",
                "/api/publish",
                orjson.dumps({"channel": name, "message": {"idle": True}}),
                {"Authorization": f"Bearer {self.daemon.publish_secret}"},
            )
            self.publishers[0].send(request)
            await asyncio.sleep(1 / self.settings.idle_publish_rate)

    # Watching.

    async def stats(self) -> dict[str, Any]:
        """GET /api/stats?mode=json over one keep-alive connection."""
        if self._stats is None:
            self._stats = await asyncio.open_connection(HOST, self.daemon.port)
        reader, writer = self._stats
        writer.write(
            http_request(
                "GET",
                "/api/stats?mode=json",
                b"",
                {"Authorization": f"Bearer {self.daemon.publish_secret}"},
            )
        )
        _, body = await read_response(reader)
        stats: dict[str, Any] = orjson.loads(body)
        return stats

    async def fetch_epoch(self) -> str:
        """The daemon's epoch, from the id of a publish that asks for it."""
        body = orjson.dumps({"channel": "soak-epoch", "message": 0, "return_id": True})
        request = http_request(
            "POST",
            "/api/publish",
            body,
            {"Authorization": f"Bearer {self.daemon.publish_secret}"},
        )
        reader, writer = await asyncio.open_connection(HOST, self.daemon.port)
        writer.write(request)
        status, answer = await read_response(reader)
        writer.close()
        if status != 200:
            raise SoakError(f"publish with return_id answered {status}")
        return str(orjson.loads(answer)["id"]).partition("-")[0]

    async def sample_forever(self) -> None:
        say(TABLE_HEAD)
        loop = asyncio.get_running_loop()
        interval = self.settings.sample_secs
        last = (loop.time(), self.tally.published, self.tally.deliveries)
        cpu = (cpu_seconds_self(), self.daemon.cpu())
        while True:
            await asyncio.sleep(interval - (loop.time() - self._started) % interval)
            now = loop.time()
            wall = max(now - last[0], 1e-9)
            stats = await self.stats()
            self.daemon.scan_log()
            self._count_silent()
            cpu_now = (cpu_seconds_self(), self.daemon.cpu())
            orphans, orphaned_bytes = orphaned_sockets(self.daemon.port)
            sample = Sample(
                elapsed=time.monotonic() - self._started,
                phase=self.phase,
                rss=self.daemon.rss(),
                fds=self.daemon.fds(),
                streams=stats["active_stream_connections"],
                open_connections=stats["open_connections"],
                publishes_per_s=(self.tally.published - last[1]) / wall,
                deliveries_per_s=(self.tally.deliveries - last[2]) / wall,
                churned=sum(self.tally.left.values()),
                slow_cut=stats["slow_subscriber_disconnects_total"],
                bad=sum(self.tally.bad.values()),
                client_cpu=(cpu_now[0] - cpu[0]) / wall,
                daemon_cpu=(cpu_now[1] - cpu[1]) / wall,
                client_fds=fd_count("self"),
                orphans=orphans,
                orphaned_bytes=orphaned_bytes,
            )
            self.samples.append(sample)
            backlog = sum(len(p.queue) for p in self.publishers)
            self.max_backlog = max(self.max_backlog, backlog)
            say(table_row(sample))
            last = (now, self.tally.published, self.tally.deliveries)
            cpu = cpu_now

    def _count_silent(self) -> None:
        limit = time.monotonic() - SILENT_HEARTBEATS * self.settings.heartbeat_secs
        for sub in self.population:
            if sub is not None and not sub.closed.done() and sub.heard_at < limit:
                self.tally.stalled += 1
                self.tally.note(f"{sub.kind} stream silent since {sub.heard_at:.0f}")
                sub.heard_at = time.monotonic()

    # Helpers.

    def _start_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        task.add_done_callback(self._task_done)
        self._background.append(task)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.tally.task_errors += 1
            name = task.get_coro().__qualname__  # type: ignore[union-attr]
            self.tally.note(f"task {name} failed: {task.exception()!r}")

    async def _every(self, interval: float, action: Callable[[], None]) -> None:
        """Call ``action`` every ``interval`` seconds while the load is on."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticks = 0
        while self.churning:
            action()
            ticks += 1
            await asyncio.sleep(max(0.0, start + ticks * interval - loop.time()))

    async def close(self) -> None:
        """Stop the daemon with the streams open, and see how they end."""
        self.closing = True
        self.publishing = False
        for task in [*self._background, *self._load, *self._inflight]:
            task.cancel()
        if self._stats is not None:
            self._stats[1].close()
        for publisher in self.publishers:
            if publisher.transport is not None:
                publisher.transport.close()

        open_streams = [
            sub for sub in self.population if sub is not None and not sub.closed.done()
        ]
        self.daemon.terminate()
        if open_streams:
            await asyncio.wait(
                [sub.closed for sub in open_streams], timeout=STOP_TIMEOUT
            )
        for sub in open_streams:
            if not sub.closed.done():
                sub.abort()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length body: ``(status, body)``."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), await reader.readexactly(length)


# The table and the report.

TABLE_HEAD = (
    "   time  phase     RSS MiB    fds  streams  pub/s  deliv/s  churned"
    "  slow cut    bad  orphans  client CPU  daemon CPU"
)


def table_row(sample: Sample) -> str:
    minutes, seconds = divmod(int(sample.elapsed), 60)
    return (
        f"{minutes:4d}:{seconds:02d}  {sample.phase:<8} {sample.rss / 2**20:8.1f}"
        f" {sample.fds:6d} {sample.streams:8d} {sample.publishes_per_s:6.0f}"
        f" {sample.deliveries_per_s:8.0f} {sample.churned:8d} {sample.slow_cut:9d}"
        f" {sample.bad:6d} {sample.orphans:8d}"
        f" {sample.client_cpu:10.0%} {sample.daemon_cpu:11.0%}"
    )


def rss_trend(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over time, in MiB per hour."""
    if len(samples) < 3:
        return None
    xs = [s.elapsed / 3600 for s in samples]
    ys = [s.rss / 2**20 for s in samples]
    return statistics.linear_regression(xs, ys).slope


def report(soak: Soak, exit_status: int | None, crashed: bool) -> list[str]:
    """Print the summary; return the reasons the soak failed (none: passed)."""
    settings, tally, daemon = soak.settings, soak.tally, soak.daemon
    failures = []
    samples = soak.samples
    churn = [s for s in samples if s.phase == "churn"]

    say()
    say("== condensed table (every ~5 min, phase changes, last)")
    say(TABLE_HEAD)
    step = max(1, round(300 / settings.sample_secs))
    for index, sample in enumerate(samples):
        changed = index > 0 and samples[index - 1].phase != sample.phase
        if index % step == 0 or changed or index == len(samples) - 1:
            say(table_row(sample))

    say()
    say("== summary")
    measured = soak.measurements
    for label in ("connected", "baseline", "end"):
        if label in measured:
            m = measured[label]
            say(
                f"{label:<10} RSS {m.rss / 2**20:7.1f} MiB  fds {m.fds:5d}  "
                f"streams {m.streams}  connections {m.open_connections}  "
                f"orphans {m.orphans}  (client fds {m.client_fds})"
            )
    baseline, end = measured.get("baseline"), measured.get("end")
    if baseline and end:
        growth = (end.rss - baseline.rss) / baseline.rss * 100
        say(
            f"growth     RSS {growth:+.2f} % ({(end.rss - baseline.rss) / 2**20:+.1f}"
            f" MiB), fds {end.fds - baseline.fds:+d}, "
            f"client fds {end.client_fds - baseline.client_fds:+d}"
        )
        if growth > settings.max_rss_growth:
            failures.append(f"RSS grew {growth:.1f} % (> {settings.max_rss_growth} %)")
        if end.fds != baseline.fds:
            failures.append(f"file descriptors {baseline.fds} -> {end.fds}")
    else:
        failures.append("the soak did not reach its end measurement")

    trend = rss_trend(churn)
    if trend is not None:
        say(f"RSS trend over the churn phase: {trend:+.2f} MiB/h (least squares)")
        tenth = max(1, len(churn) // 10)
        first = statistics.median(s.rss for s in churn[:tenth]) / 2**20
        last = statistics.median(s.rss for s in churn[-tenth:]) / 2**20
        say(f"  median RSS, first tenth {first:.1f} MiB, last tenth {last:.1f} MiB")

    say(
        f"churn: {sum(tally.left.values())} left ({dict(tally.left)}); "
        f"opened {sum(tally.opened.values())} ({dict(tally.opened)}); "
        f"resumed {sum(tally.resumed.values())} ({dict(tally.resumed)})"
    )
    daemon_slow = samples[-1].slow_cut if samples else 0
    say(
        f"slow: {tally.slow_started} started, {tally.slow_cut} cut off "
        f"({tally.slow_goodbyes} told why), {tally.slow_survived} not cut off, "
        f"{tally.slow_ended_early} ended early by a quiesce; "
        f"daemon counted {daemon_slow}; they received "
        f"{tally.slow_deliveries} messages"
    )
    if samples:
        most = max(samples, key=lambda s: s.orphaned_bytes)
        say(
            f"orphaned sockets on the daemon's port (closed, data unsent): at most "
            f"{max(s.orphans for s in samples)}, holding at most "
            f"{most.orphaned_bytes / 2**20:.1f} MiB of kernel memory"
        )
    if daemon_slow == 0:
        say("  warning: no slow subscriber was cut off: that path went untested")
    say(f"bad requests: {sum(tally.bad.values())} ({dict(tally.bad)})")
    say(
        f"publishes acknowledged {tally.published}, errors {tally.publish_errors};"
        f" deliveries to healthy streams {tally.deliveries}"
    )
    say(
        f"healthy streams: lost {tally.lost}, duplicates {tally.duplicates}, "
        f"gaps {tally.gaps}, ended by the daemon {tally.unexpected_closes}, "
        f"silent {tally.stalled}, undecodable {tally.protocol_errors}, "
        f"failed to open {tally.open_failures}"
    )
    if samples:
        client = [s.client_cpu for s in samples]
        server = [s.daemon_cpu for s in samples]
        say(
            f"CPU (share of one core): client mean {statistics.mean(client):.0%}"
            f" max {max(client):.0%}; daemon mean {statistics.mean(server):.0%}"
            f" max {max(server):.0%}"
        )
        if max(client) > 0.9:
            say("  warning: the client saturated a core at times")
    daemon.scan_log()
    say(f"daemon log {daemon.log}:")
    for key, count in sorted(daemon.log_counts.items()):
        say(f"  {count:8d} {key}")
    for line in daemon.log_problems[:10]:
        say(f"  {line}")
    say(f"daemon exit status: {exit_status}")
    for example in tally.examples:
        say(f"  note: {example}")

    say(f"shutdown (SIGTERM with the population open): {dict(soak.farewells)}")
    say(f"publish backlog at most {soak.max_backlog} requests")
    checks = [
        (bool(soak.aborted), f"the soak itself failed: {soak.aborted}"),
        (crashed, "the daemon crashed"),
        (exit_status != 0, f"the daemon stopped with status {exit_status}"),
        (bool(daemon.log_problems), "the daemon logged Traceback or ERROR"),
        (tally.lost > 0, f"{tally.lost} messages lost"),
        (tally.duplicates > 0, f"{tally.duplicates} duplicates"),
        (tally.gaps > 0, f"{tally.gaps} gap envelopes on healthy resumes"),
        (tally.unexpected_closes > 0, "healthy streams ended by the daemon"),
        (tally.stalled > 0, "healthy streams went silent"),
        (tally.protocol_errors > 0, "undecodable streams"),
        (tally.open_failures > 0, "streams failed to open"),
        (tally.publish_errors > 0, "publishes failed"),
        (bool(tally.bad_surprises), f"bad requests: {dict(tally.bad_surprises)}"),
        (tally.task_errors > 0, "client tasks failed"),
    ]
    failures += [reason for failed, reason in checks if failed]
    return failures


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}"


def commit() -> str:
    source = Path(rpushd.__file__).resolve().parent
    result = subprocess.run(
        ["git", "-C", str(source), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "unknown"


async def supervise(soak: Soak) -> bool:
    """Run the soak, then stop the daemon; return whether it crashed."""
    run = asyncio.create_task(soak.run())
    crashed = False
    while not run.done():
        await asyncio.wait({run}, timeout=1)
        if not soak.daemon.running():
            crashed = True
            say(f"the daemon exited with status {soak.daemon.returncode}")
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    if not run.cancelled() and run.exception() is not None:
        exc = run.exception()
        soak.aborted = repr(exc)
        traceback.print_exception(exc)
    await soak.close()
    return crashed


def main(argv: list[str]) -> int:
    settings = parse_args(argv)
    limit = raise_fd_limit()
    needed = settings.streams + 1000
    if needed > min(limit, MAX_FDS):
        raise SoakError(f"{needed} open files needed; the limit is {limit}")

    daemon = Daemon(settings)
    say(f"rpushd soak: {' '.join(sys.argv)}")
    say(f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {machine()}")
    say(f"rpushd {rpushd.__version__} from {Path(rpushd.__file__).parent}, {commit()}")
    say(f"python {platform.python_version()}, uvloop {uvloop.__version__}")
    say(f"settings: {settings}")
    daemon.start()
    say(f"daemon pid {daemon.pid} on port {daemon.port}: {daemon.env}")

    soak = Soak(settings, daemon)
    crashed = True
    try:
        crashed = uvloop.run(supervise(soak))
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        exit_status = daemon.stop()

    failures = report(soak, exit_status, crashed)
    say()
    if failures:
        say("verdict: FAIL")
        for reason in failures:
            say(f"  - {reason}")
        return 1
    say("verdict: PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        sys.exit(2)
