"""The load generator: thousands of subscribers and a few publishers, one loop.

It must never be the bottleneck, and the kernel's cost per socket read
(several microseconds) is what would make it one. So subscribers are raw
non-blocking sockets split over two epoll sets:

- the *bulk* set holds most subscribers. It is swept only every
  ``bulk_interval`` seconds, so that each socket has gathered several
  messages and one read returns them all. A bulk read is never parsed:
  deliveries are counted as occurrences of :data:`wire.MARKER`, keeping the
  last few bytes of each read to catch a marker split across two reads.
- the *fast* set holds the sampled subscribers (1 in ``sample_every``, at
  least ``min_samples``), the publishers and the sockets still connecting.
  It is polled continually, also between slices of a bulk sweep, so that
  a sampled subscriber reads each message within about a millisecond.
  Sampled subscribers decode their whole stream (chunks, frames, events or
  WebSocket frames, envelopes, messages): latency (publish time is in the
  message), per-publisher order and duplicates come from them.

Publishers are keep-alive HTTP/1.1 connections with one request in flight
each (no pipelining). A publish plan sends on whichever connection is idle,
at a fixed rate or as fast as answers come back. Each publish carries its
own connection index, a global sequence number and its send time.

Everything runs on one thread; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import math
import os
import resource
import select
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wire import (
    MARKER,
    Dialect,
    ResponseReader,
    WireError,
    decode_message,
    encode_message,
    split_head,
    websocket_key,
)

READ_SIZE = 256 * 1024
MAX_HEAD_BYTES = 16 * 1024
FAST_EVENTS = 4096
"""Most events taken from the fast set per poll; the rest wait a turn."""
FAST_EVERY = 128
"""Bulk reads between two polls of the fast set during a sweep."""

_TAIL = len(MARKER) - 1
_LINGER_ABORT = struct.pack("ii", 1, 0)
_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds_self() -> float:
    """CPU time (user + system) this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_seconds() -> dict[int, tuple[float, float]]:
    """``(busy, stolen)`` seconds of each core so far, from /proc/stat.

    Interrupt and softirq time counts as busy: on loopback much of the
    network stack's work runs there, charged to no process. Stolen time is
    time the hypervisor gave to other machines while this core wanted to run.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, values[:8]
            )
            busy = (user + nice + system + irq + softirq) / ticks
            found[int(name[3:])] = (busy, steal / ticks)
    return found


@dataclass
class Usage:
    """CPU shares (of one core) over a period.

    The load generator's, the server's, how busy each core was, and how
    much of each core the hypervisor stole.
    """

    loadgen: float
    server: float
    cores: dict[int, float]
    stolen: dict[int, float]


class Meter:
    """Measures :class:`Usage` from its creation to each :meth:`read`."""

    def __init__(self, server_cpu: Callable[[], float]) -> None:
        self._server_cpu = server_cpu
        self._started = time.monotonic()
        self._loadgen = cpu_seconds_self()
        self._server = server_cpu()
        self._cores = core_seconds()

    def read(self) -> Usage:
        wall = max(time.monotonic() - self._started, 1e-9)
        now = core_seconds()
        before = {core: self._cores.get(core, (0.0, 0.0)) for core in now}
        return Usage(
            loadgen=(cpu_seconds_self() - self._loadgen) / wall,
            server=(self._server_cpu() - self._server) / wall,
            cores={c: (now[c][0] - before[c][0]) / wall for c in now},
            stolen={c: (now[c][1] - before[c][1]) / wall for c in now},
        )


def percentile(ordered: Sequence[int], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted values, ``None`` for no values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


class State(enum.Enum):
    CONNECTING = "connecting"
    HEAD = "head"
    OPENING = "opening"
    """The head has arrived, not yet the stream's opening (heartbeat, hello)."""
    STREAMING = "streaming"
    CLOSED = "closed"


class Subscriber:
    """One stream: its socket, where it is in its life, and what it got."""

    __slots__ = (
        "sock",
        "fd",
        "channel",
        "sampled",
        "state",
        "head",
        "started_at",
        "ready_at",
        "tail",
        "delivered",
        "decoder",
        "last_seq",
        "key",
    )

    def __init__(
        self, sock: socket.socket, channel: int, sampled: bool, dialect: Dialect
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.channel = channel
        self.sampled = sampled
        self.state = State.CONNECTING
        self.head = b""
        """The response head so far, then the body until the stream opens."""
        self.started_at = 0.0
        self.ready_at = 0.0
        self.tail = b""
        self.delivered = 0
        self.decoder = dialect.decoder()
        self.last_seq: dict[int, int] = {}
        self.key = websocket_key() if dialect.upgrade else ""


class Publisher:
    """One keep-alive publish connection with at most one request in flight."""

    __slots__ = ("index", "sock", "fd", "reader", "busy", "channel", "sent_at")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = ResponseReader()
        self.busy = False
        self.channel = 0
        self.sent_at = 0.0


@dataclass
class OpenResult:
    """How opening a set of streams went."""

    requested: int
    opened: int
    seconds: float
    ready_seconds: list[float]
    failures: Counter[str]
    usage: Usage

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


@dataclass
class StepResult:
    """One measured period of publishing, drained and checked."""

    rate: float | None
    seconds: float
    sent: int
    acked: int
    publish_errors: int
    expected: int
    delivered: int
    latencies_us: list[int]
    answer_us: list[int]
    order_errors: int
    wire_errors: int
    disconnects: int
    usage: Usage
    aborted: str
    behind: int
    subscribers: int
    samplers: int
    drain_seconds: float

    @property
    def loss(self) -> int:
        """Acknowledged deliveries that never arrived (negative: extra ones)."""
        return self.expected - self.delivered

    @property
    def loadgen_cpu(self) -> float:
        return self.usage.loadgen

    @property
    def server_cpu(self) -> float:
        return self.usage.server

    @property
    def publishes_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0

    @property
    def deliveries_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    def latency_ms(self, fraction: float) -> float | None:
        """Publish-to-receive latency percentile, from sampled streams."""
        value = percentile(self.latencies_us, fraction)
        return None if value is None else value / 1000.0

    def answer_ms(self, fraction: float) -> float | None:
        """Percentile of the time from sending a publish to its answer."""
        value = percentile(self.answer_us, fraction)
        return None if value is None else value / 1000.0


@dataclass
class IdleResult:
    """A period with open streams and nothing published."""

    seconds: float
    received_bytes: int
    disconnects: int
    usage: Usage


@dataclass
class _Plan:
    """When publishes are due: ``rate`` per second, or ``None`` for flat out."""

    rate: float | None
    started: float
    sent: int = 0

    def due(self, now: float) -> float:
        if self.rate is None:
            return math.inf
        return math.floor((now - self.started) * self.rate) + 1


@dataclass
class _Tally:
    """Counters that a step reads before and after."""

    sent: int = 0
    publish_errors: int = 0
    delivered: int = 0
    order_errors: int = 0
    wire_errors: int = 0
    disconnects: int = 0
    latencies_us: list[int] = field(default_factory=list)
    answer_us: list[int] = field(default_factory=list)


class LoadGenerator:
    """Drives one server: open streams, publish, count, measure.

    ``dialect`` says how to talk to the server, ``token`` mints a subscribe
    token for a channel (empty for nchan), and ``server_cpu`` returns the
    server's CPU seconds so far, so each step can report the server's load
    beside the generator's own.
    """

    def __init__(
        self,
        dialect: Dialect,
        port: int,
        channels: Sequence[str],
        *,
        token: Callable[[str], str],
        server_cpu: Callable[[], float],
        bulk_interval: float = 0.1,
        host: str = "127.0.0.1",
    ) -> None:
        self.dialect = dialect
        self.address = (host, port)
        self.channels = list(channels)
        self.bulk_interval = bulk_interval
        self._server_cpu = server_cpu
        self._tokens = [token(name) for name in self.channels]
        self._templates = [dialect.publish_template(name) for name in self.channels]

        self._fast = select.epoll()
        self._bulk = select.epoll()
        self._buffer = bytearray(READ_SIZE)
        self._subscribers: dict[int, Subscriber] = {}
        self._connecting: dict[int, Subscriber] = {}
        self._publishers: dict[int, Publisher] = {}
        self._idle: list[Publisher] = []
        self._plan: _Plan | None = None
        self._next_bulk = 0.0
        self._seq = 0
        self.tally = _Tally()
        self.acked = [0] * len(self.channels)
        self.received_bytes = 0
        self.failures: Counter[str] = Counter()

    # Streams.

    def open_streams(
        self,
        channels: Sequence[int],
        *,
        sample_every: int,
        min_samples: int,
        in_flight: int,
        timeout: float,
    ) -> OpenResult:
        """Open one stream per entry of ``channels`` (channel indices).

        At most ``in_flight`` are connecting at once; pass ``len(channels)``
        to fire them all at the same moment. Every ``sample_every``-th
        stream, and at least ``min_samples`` in all, is sampled. A stream
        counts as open once its response head and its opening (rpushd's
        first heartbeat or hello envelope; nothing for nchan) have arrived;
        ``ready_seconds`` lists how long each took
        from the start of this call.
        """
        samples = max(min_samples, len(channels) // max(1, sample_every))
        samples = min(samples, len(channels))
        stride = max(1, len(channels) // max(1, samples))
        pending = deque(
            (channel, index % stride == 0 and index // stride < samples)
            for index, channel in enumerate(channels)
        )
        self.failures = Counter()
        meter = Meter(self._server_cpu)
        started = time.monotonic()
        deadline = started + timeout
        opened: list[Subscriber] = []

        while (pending or self._connecting) and time.monotonic() < deadline:
            while pending and len(self._connecting) < in_flight:
                channel, sampled = pending.popleft()
                self._connect(channel, sampled, started)
            for sub in self._service_fast(0.005):
                opened.append(sub)
            if time.monotonic() >= self._next_bulk:
                self._sweep_bulk()

        for sub in list(self._connecting.values()):
            self._fail(sub, f"no answer within {timeout:g} s")
        if pending:
            self.failures["never started"] += len(pending)
        elapsed = time.monotonic() - started
        return OpenResult(
            requested=len(channels),
            opened=len(opened),
            seconds=elapsed,
            ready_seconds=sorted(sub.ready_at - started for sub in opened),
            failures=self.failures,
            usage=meter.read(),
        )

    def live_subscribers(self) -> list[int]:
        """How many streams are open on each channel."""
        counts = [0] * len(self.channels)
        for sub in self._subscribers.values():
            if sub.state is State.STREAMING:
                counts[sub.channel] += 1
        return counts

    @property
    def samplers(self) -> int:
        return sum(
            1
            for sub in self._subscribers.values()
            if sub.sampled and sub.state is State.STREAMING
        )

    def close(self) -> None:
        """Abort every connection (no TIME_WAIT left behind) and the epolls."""
        for sub in list(self._subscribers.values()):
            self._drop(sub)
        for pub in list(self._publishers.values()):
            self._drop_publisher(pub)
        self._fast.close()
        self._bulk.close()

    # Publishing.

    def open_publishers(self, count: int) -> None:
        """Have ``count`` keep-alive publish connections ready."""
        while len(self._publishers) < count:
            sock = socket.create_connection(self.address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            used = {pub.index for pub in self._publishers.values()}
            index = min(set(range(count)) - used)
            pub = Publisher(index, sock)
            self._publishers[pub.fd] = pub
            self._idle.append(pub)
            self._fast.register(pub.fd, _READ_EVENTS)

    def run_step(
        self,
        rate: float | None,
        seconds: float,
        *,
        publishers: int,
        drain_limit: float = 15.0,
        abort_lag_secs: float = 2.0,
        abort_latency_secs: float = 2.0,
    ) -> StepResult:
        """Publish for ``seconds`` at ``rate`` per second (``None``: flat out).

        Channels are published to in turn. The step is cut short once the
        publishers fall ``abort_lag_secs`` behind the schedule or a sampled
        message takes longer than ``abort_latency_secs`` to arrive; either
        way the server could not hold the rate. Then every answer is
        awaited and deliveries are drained: until every acknowledged
        message has reached every subscriber of its channel, or the count
        stops growing for a second, or ``drain_limit`` passes.
        """
        self.open_publishers(publishers)
        live = self.live_subscribers()
        before = _copy(self.tally)
        self.tally.latencies_us = []
        self.tally.answer_us = []
        self.acked = [0] * len(self.channels)
        meter = Meter(self._server_cpu)
        started = time.monotonic()
        self._plan = _Plan(rate, started)
        aborted = ""
        next_check = started + 0.5
        deadline = started + seconds

        while (now := time.monotonic()) < deadline:
            self._turn(now, deadline)
            if now >= next_check:
                next_check = now + 0.5
                aborted = self._why_abort(now, abort_lag_secs, abort_latency_secs)
                if aborted:
                    break

        plan, self._plan = self._plan, None
        publishing_ended = time.monotonic()
        behind = 0 if rate is None else max(0, int(plan.due(publishing_ended)) - 1)
        behind = max(0, behind - plan.sent)
        self._await_answers(publishing_ended + drain_limit)
        expected = sum(a * n for a, n in zip(self.acked, live, strict=True))
        drain_seconds = self._drain(before.delivered + expected, drain_limit)
        elapsed = publishing_ended - started

        after = self.tally
        return StepResult(
            rate=rate,
            seconds=elapsed,
            sent=after.sent - before.sent,
            acked=sum(self.acked),
            publish_errors=after.publish_errors - before.publish_errors,
            expected=expected,
            delivered=after.delivered - before.delivered,
            latencies_us=sorted(after.latencies_us),
            answer_us=sorted(after.answer_us),
            order_errors=after.order_errors - before.order_errors,
            wire_errors=after.wire_errors - before.wire_errors,
            disconnects=after.disconnects - before.disconnects,
            usage=meter.read(),
            aborted=aborted,
            behind=behind,
            subscribers=sum(live),
            samplers=self.samplers,
            drain_seconds=drain_seconds,
        )

    def idle(self, seconds: float) -> IdleResult:
        """Keep every stream open and read for ``seconds``; publish nothing."""
        meter = Meter(self._server_cpu)
        bytes_before = self.received_bytes
        disconnects_before = self.tally.disconnects
        started = time.monotonic()
        deadline = started + seconds
        while (now := time.monotonic()) < deadline:
            self._turn(now, deadline)
        wall = time.monotonic() - started
        return IdleResult(
            seconds=wall,
            received_bytes=self.received_bytes - bytes_before,
            disconnects=self.tally.disconnects - disconnects_before,
            usage=meter.read(),
        )

    # The loop.

    def _turn(self, now: float, deadline: float) -> None:
        """One pass: a bulk sweep if one is due, else a short fast poll."""
        if now >= self._next_bulk:
            self._sweep_bulk()
            return
        wake = min(self._next_bulk, deadline)
        plan = self._plan
        if plan is not None and plan.rate is not None and self._idle:
            wake = min(wake, plan.started + plan.sent / plan.rate)
        self._service_fast(min(max(0.0, wake - now), 0.005))

    def _service_fast(self, timeout: float) -> list[Subscriber]:
        """Handle what the fast set reports; return streams that just opened."""
        opened = []
        for fd, events in self._fast.poll(timeout, FAST_EVENTS):
            sub = self._subscribers.get(fd)
            if sub is None:
                pub = self._publishers.get(fd)
                if pub is not None:
                    self._read_publisher(pub)
            elif sub.state is State.STREAMING:
                self._read_sampled(sub)
            elif self._advance(sub, events):
                opened.append(sub)
        self._pump()
        return opened

    def _sweep_bulk(self) -> None:
        """Read every bulk stream that has data; count markers, parse nothing."""
        buffer = self._buffer
        subscribers = self._subscribers
        readv = os.readv
        delivered = 0
        received = 0
        ready = self._bulk.poll(0, len(subscribers) + 1)
        for index, (fd, _events) in enumerate(ready):
            sub = subscribers.get(fd)
            if sub is None:
                continue
            try:
                size = readv(fd, (buffer,))
            except BlockingIOError:
                continue
            except OSError as exc:
                self._lose(sub, exc.strerror or "read error")
                continue
            if size == 0:
                self._lose(sub, "closed by server")
                continue

            count = buffer.count(MARKER, 0, size)
            if sub.tail:
                # Only a marker begun in the tail and ended here is new.
                count += (sub.tail + buffer[:_TAIL]).count(MARKER)
            if size >= _TAIL:
                sub.tail = bytes(buffer[size - _TAIL : size])
            else:
                sub.tail = (sub.tail + buffer[:size])[-_TAIL:]
            sub.delivered += count
            delivered += count
            received += size
            if index % FAST_EVERY == FAST_EVERY - 1:
                self._service_fast(0)
        self.tally.delivered += delivered
        self.received_bytes += received
        self._next_bulk = time.monotonic() + self.bulk_interval

    # Subscribers.

    def _connect(self, channel: int, sampled: bool, started: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sub = Subscriber(sock, channel, sampled, self.dialect)
        sub.started_at = started
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self.failures["connect: " + os.strerror(code)] += 1
            sock.close()
            return
        self._subscribers[sub.fd] = sub
        self._connecting[sub.fd] = sub
        self._fast.register(sub.fd, select.EPOLLOUT)

    def _advance(self, sub: Subscriber, events: int) -> bool:
        """Move a connecting stream on; ``True`` once it is open."""
        if sub.state is State.CONNECTING:
            code = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(sub, "connect: " + os.strerror(code))
                return False
            channel = self.channels[sub.channel]
            request = self.dialect.subscribe_request(
                channel, self._tokens[sub.channel], sub.key
            )
            try:
                sub.sock.send(request)
            except OSError as exc:
                self._fail(sub, "send: " + (exc.strerror or "error"))
                return False
            sub.state = State.HEAD
            self._fast.modify(sub.fd, _READ_EVENTS)
            return False

        try:
            data = sub.sock.recv(READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(sub, "recv: " + (exc.strerror or "error"))
            return False
        if not data:
            self._fail(sub, "closed before the stream opened")
            return False
        if sub.state is State.OPENING:
            return self._opening(sub, data)
        sub.head += data
        return self._check_head(sub)

    def _check_head(self, sub: Subscriber) -> bool:
        try:
            split = split_head(sub.head)
        except WireError as exc:
            self._fail(sub, str(exc))
            return False
        if split is None:
            if len(sub.head) > MAX_HEAD_BYTES:
                self._fail(sub, "response head too large")
            return False

        status, head, rest = split
        problem = self.dialect.head_problem(status, head, sub.key)
        if problem:
            self._fail(sub, problem)
            return False
        sub.state = State.OPENING
        sub.head = b""
        return self._opening(sub, rest)

    def _opening(self, sub: Subscriber, data: bytes) -> bool:
        """Decode a stream's first bytes until it opens; ``True`` once it has."""
        sub.head += data
        try:
            messages = sub.decoder.feed(data)
        except WireError as exc:
            self._fail(sub, str(exc))
            return False
        if sub.decoder.ended:
            self._fail(sub, "stream ended before it opened")
            return False
        if not sub.decoder.ready:
            if len(sub.head) > MAX_HEAD_BYTES:
                self._fail(sub, "stream opening too large")
            return False

        sub.ready_at = time.monotonic()
        sub.state = State.STREAMING
        received, sub.head = sub.head, b""
        del self._connecting[sub.fd]
        if sub.sampled:
            try:
                self._record(sub, messages)
            except WireError as exc:
                self.tally.wire_errors += 1
                self._lose(sub, str(exc))
        else:
            self._fast.unregister(sub.fd)
            self._bulk.register(sub.fd, _READ_EVENTS)
            counted = received.count(MARKER)
            sub.delivered += counted
            self.tally.delivered += counted
            sub.tail = received[-_TAIL:]
        return True

    def _read_sampled(self, sub: Subscriber) -> None:
        try:
            data = sub.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(sub, exc.strerror or "read error")
            return
        if not data:
            self._lose(sub, "closed by server")
            return
        self.received_bytes += len(data)
        self._absorb(sub, data)

    def _absorb(self, sub: Subscriber, data: bytes) -> None:
        """Decode a sampled stream's bytes: latency, order, duplicates."""
        try:
            self._record(sub, sub.decoder.feed(data))
        except WireError as exc:
            self.tally.wire_errors += 1
            self._lose(sub, str(exc))
            return
        if sub.decoder.ended:
            self._lose(sub, "server ended the stream")

    def _record(self, sub: Subscriber, payloads: list[bytes]) -> None:
        """Count a sampled stream's messages and take their latency."""
        if not payloads:
            return
        now_us = int(time.monotonic() * 1_000_000)
        tally = self.tally
        for payload in payloads:
            message = decode_message(payload)
            tally.latencies_us.append(now_us - message.sent_us)
            last = sub.last_seq.get(message.connection, -1)
            if message.seq <= last:
                tally.order_errors += 1
            sub.last_seq[message.connection] = message.seq
            sub.delivered += 1
            tally.delivered += 1

    def _fail(self, sub: Subscriber, reason: str) -> None:
        """A stream that never opened."""
        self.failures[reason] += 1
        self._connecting.pop(sub.fd, None)
        self._drop(sub)

    def _lose(self, sub: Subscriber, reason: str) -> None:
        """An open stream that ended."""
        self.tally.disconnects += 1
        self.failures["lost: " + reason] += 1
        self._drop(sub)

    def _drop(self, sub: Subscriber) -> None:
        if sub.state is State.CLOSED:
            return
        epoll = self._bulk if sub.state is State.STREAMING and not sub.sampled else None
        with contextlib.suppress(OSError, ValueError):
            (epoll or self._fast).unregister(sub.fd)
        self._subscribers.pop(sub.fd, None)
        sub.state = State.CLOSED
        _abort(sub.sock)

    # Publishers.

    def _pump(self) -> None:
        """Send every publish that is due on the idle connections."""
        plan = self._plan
        if plan is None or not self._idle:
            return
        due = plan.due(time.monotonic())
        while self._idle and plan.sent < due:
            self._send(self._idle.pop())
            plan.sent += 1

    def _send(self, pub: Publisher) -> None:
        seq = self._seq
        self._seq += 1
        channel = seq % len(self.channels)
        before, after = self._templates[channel]
        pub.sent_at = time.monotonic()
        message = encode_message(pub.index, seq, int(pub.sent_at * 1_000_000))
        request = before + message + after
        try:
            # A request of a few hundred bytes on an idle connection always
            # fits the socket's send buffer: one send is the whole request.
            if pub.sock.send(request) != len(request):
                raise OSError(errno.EAGAIN, "partial send of a publish request")
        except OSError as exc:
            self._publisher_failed(pub, "send: " + (exc.strerror or str(exc)))
            return
        pub.busy = True
        pub.channel = channel
        self.tally.sent += 1

    def _read_publisher(self, pub: Publisher) -> None:
        try:
            data = pub.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._publisher_failed(pub, "recv: " + (exc.strerror or "error"))
            return
        if not data:
            self._publisher_failed(pub, "closed by server")
            return
        try:
            statuses = pub.reader.feed(data)
        except WireError as exc:
            self._publisher_failed(pub, str(exc))
            return
        if statuses and pub.busy:
            waited = time.monotonic() - pub.sent_at
            self.tally.answer_us.append(int(waited * 1_000_000))
        for status in statuses:
            if status in self.dialect.acked_statuses:
                self.acked[pub.channel] += 1
            else:
                self.tally.publish_errors += 1
                self.failures[f"publish status {status}"] += 1
        if statuses and pub.busy:
            pub.busy = False
            self._idle.append(pub)

    def _publisher_failed(self, pub: Publisher, reason: str) -> None:
        if pub.busy:
            self.tally.publish_errors += 1
        self.failures["publisher " + reason] += 1
        self._drop_publisher(pub)

    def _drop_publisher(self, pub: Publisher) -> None:
        self._publishers.pop(pub.fd, None)
        if pub in self._idle:
            self._idle.remove(pub)
        with contextlib.suppress(OSError, ValueError):
            self._fast.unregister(pub.fd)
        _abort(pub.sock)

    # Ending a step.

    def _why_abort(self, now: float, lag_secs: float, latency_secs: float) -> str:
        plan = self._plan
        if plan is not None and plan.rate is not None:
            behind = plan.due(now) - 1 - plan.sent
            if behind > plan.rate * lag_secs:
                return "publishers %.1f s behind schedule" % (behind / plan.rate)
        latencies = self.tally.latencies_us
        recent = latencies[-200:]
        if recent and max(recent) > latency_secs * 1_000_000:
            return f"a message took over {latency_secs:g} s to arrive"
        return ""

    def _await_answers(self, deadline: float) -> None:
        while any(pub.busy for pub in self._publishers.values()):
            now = time.monotonic()
            if now >= deadline:
                for pub in [p for p in self._publishers.values() if p.busy]:
                    self._publisher_failed(pub, "no answer in time")
                return
            self._turn(now, deadline)

    def _drain(self, target: int, limit: float) -> float:
        """Read until ``target`` deliveries, or no progress for 1 s; seconds."""
        started = time.monotonic()
        deadline = started + limit
        last_count = self.tally.delivered
        last_change = started
        while self.tally.delivered < target:
            now = time.monotonic()
            if now >= deadline or now - last_change > 1.0:
                break
            self._turn(now, deadline)
            if self.tally.delivered != last_count:
                last_count = self.tally.delivered
                last_change = time.monotonic()
        return time.monotonic() - started


def _copy(tally: _Tally) -> _Tally:
    """The counters of ``tally`` as they are now (latencies left out)."""
    return _Tally(**{**tally.__dict__, "latencies_us": [], "answer_us": []})


def _abort(sock: socket.socket) -> None:
    """Close with a reset, so that no TIME_WAIT state pins a local port."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    sock.close()
