"""The daemon's own price of a delivery and of a publish, without the kernel.

bench/syscall_floor.py measures what a write costs the kernel; this script
measures the other side: the work of our own Python code, with
transports that accept bytes and do nothing. Four figures:

- per stream in a fan-out pass: one message handed to N subscribers of a
  channel and every subscriber's queue flushed, divided by N;
- per publish request: the bytes of a ``POST /api/publish`` fed to a
  connection (httptools parsing, routing, the bearer check, JSON, history,
  metrics, the answer) plus the fan-out to ``--subscribers`` streams;
- the least any Python server can spend on that request: httptools calling
  back for each part, orjson reading the body, a fixed answer written;
- the pause of a full garbage collection with ``--streams`` connections
  holding a stream each (their transports excepted), which every such
  collection adds to the latency of whatever is in flight.

Together with the kernel floor they bound what any change to our code can
win: a delivery can get no cheaper than the floor plus the first figure.

    python bench/python_cost.py [--streams 10000] [--subscribers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable

import httptools
import orjson
import uvloop

from rpushd import config, frames
from rpushd.channels import ChannelRegistry
from rpushd.connection import HttpConnection
from rpushd.deliveries import Delivery
from rpushd.endpoints import Endpoints
from rpushd.hub import Hub
from rpushd.streams import Outbox, Stream

PAYLOAD = b'{"sent":1764770000000000,"pad":"' + b"x" * 66 + b'"}'
PUBLISH_SECRET = "p" * 32
ROUNDS = 7


class NullTransport:
    """Takes writes and forgets them: only the caller's work is timed."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass


def best_of(rounds: int, count: int, action: Callable[[], None]) -> float:
    """Microseconds per call of ``action``, best round of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            action()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def new_stream(outbox: Outbox) -> Stream:
    return Stream(
        NullTransport(),  # type: ignore[arg-type]
        frames.PLAIN_CHUNKED,
        outbox=outbox,
        limit=1 << 20,
        on_overflow=lambda stream: None,
    )


def fanout_cost(streams: int) -> float:
    """Microseconds per subscriber to fan one message out and flush it."""
    outbox = Outbox(asyncio.get_running_loop())
    registry = ChannelRegistry()
    channel = registry.get("broadcast")
    for _ in range(streams):
        registry.subscribe(channel, new_stream(outbox))

    sequence = iter(range(1, 1 << 62))

    def one_message() -> None:
        delivery = Delivery("00000000", next(sequence), "broadcast", PAYLOAD, 0.0)
        registry.publish(delivery, channel)
        outbox.flush()

    return best_of(ROUNDS, 30, one_message) / streams


def publish_cost(subscribers: int, count: int) -> float:
    """Microseconds per publish request answered and fanned out."""
    hub = Hub(daemon_settings(), asyncio.get_running_loop())
    hub.max_connections = 1 << 20
    channel = hub.channels.get("ingest")
    for _ in range(subscribers):
        stream = new_stream(hub.outbox)
        stream.channels = [channel]
        hub.channels.subscribe(channel, stream)

    connection = HttpConnection(hub, Endpoints(hub))
    answers = NullTransport()
    connection.connection_made(answers)  # type: ignore[arg-type]
    request = publish_request()

    def one_publish() -> None:
        connection.data_received(request)
        hub.outbox.flush()

    cost = best_of(ROUNDS, count, one_publish)
    if answers.writes != ROUNDS * count:
        raise SystemExit(f"expected {ROUNDS * count} answers, got {answers.writes}")
    return cost


class BareHandler:
    """Keeps what httptools reports and answers 204: nothing else."""

    def __init__(self, transport: NullTransport) -> None:
        self.transport = transport
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        orjson.loads(self.body)
        self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.headers = []
        self.body = b""


def bare_cost(count: int) -> float:
    """Microseconds per request for :class:`BareHandler`."""
    handler = BareHandler(NullTransport())
    parser = httptools.HttpRequestParser(handler)
    request = publish_request()
    return best_of(ROUNDS, count, lambda: parser.feed_data(request))


def publish_request() -> bytes:
    body = b'{"channel":"ingest","message":%s}' % PAYLOAD
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    ) % (PUBLISH_SECRET.encode(), len(body), body)


def collection_pause(streams: int) -> float:
    """Milliseconds of one full collection with ``streams`` open streams."""
    # What the other measurements left behind is collected first, so that
    # the pause timed is that of scanning live objects, as in a daemon.
    gc.collect()
    hub = Hub(daemon_settings(), asyncio.get_running_loop())
    hub.max_connections = 1 << 20
    endpoints = Endpoints(hub)
    held = []
    for number in range(streams):
        connection = HttpConnection(hub, endpoints)
        connection.connection_made(NullTransport())  # type: ignore[arg-type]
        stream = new_stream(hub.outbox)
        stream.channels = [hub.channels.get(f"c{number // 10}")]
        hub.channels.subscribe(stream.channels[0], stream)
        hub.streams.add(stream)
        hub.heartbeats.add(stream)
        held.append(connection)

    started = time.perf_counter()
    gc.collect()
    return (time.perf_counter() - started) * 1000


def daemon_settings() -> config.Config:
    return config.load(
        {"RPUSHD_SECRET": "s" * 32, "RPUSHD_PUBLISH_SECRET": PUBLISH_SECRET}
    )


async def measure(args: argparse.Namespace) -> None:
    # First: the publish measurement leaves the loop a callback per publish
    # that it never runs, which a collection would then have to scan.
    pause = collection_pause(args.streams)
    print(
        f"full garbage collection: {pause:.0f} ms with {args.streams} "
        f"streams open ({len(gc.get_objects()):,} objects tracked)"
    )
    per_stream = fanout_cost(args.streams)
    print(
        f"fan-out: {per_stream:.2f} us of our CPU per subscriber "
        f"(one message to {args.streams} streams, queued and flushed)"
    )
    per_publish = publish_cost(args.subscribers, args.publishes)
    print(
        f"publish: {per_publish:.1f} us of our CPU per request "
        f"(parsed, checked, answered, fanned out to {args.subscribers} streams)"
    )
    print(
        f"bare request: {bare_cost(args.publishes):.1f} us per request "
        "(httptools callbacks, orjson, a fixed answer; no routing, no checks)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--publishes", type=int, default=20_000)
    uvloop.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
