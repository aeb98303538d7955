"""Streams and the outbox, on a real uvloop loop over real socket pairs.

Our end of each socket pair is a real uvloop transport; the test reads the
other end. Writes are counted by a thin shim that forwards every call to the
real transport, so what is counted is what the socket was given.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from helpers import UNIT
from rpushd.deliveries import Delivery
from rpushd.frames import (
    HEARTBEAT,
    LAST_CHUNK,
    PLAIN,
    PLAIN_CHUNKED,
    Frame,
    FrameDecoder,
)
from rpushd.streams import SLICE, Outbox, Stream

MIB = 1024 * 1024


def message(payload: bytes) -> Delivery:
    return Delivery("0badcafe", 1, "room", payload, 0.0)


class CountingTransport:
    """A real transport whose ``write`` calls are recorded."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.real = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Pair:
    """Our transport on one end of a socket pair, the peer on the other."""

    def __init__(self, transport: CountingTransport, peer: socket.socket) -> None:
        self.transport = transport
        self.peer = peer
        self.overflowed: list[Stream] = []

    @classmethod
    async def open(cls) -> Pair:
        ours, peer = socket.socketpair()
        peer.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        return cls(CountingTransport(transport), peer)

    def stream(
        self, outbox: Outbox, *, chunked: bool = False, limit: int = MIB
    ) -> Stream:
        return Stream(
            self.transport,  # type: ignore[arg-type]
            PLAIN_CHUNKED if chunked else PLAIN,
            outbox=outbox,
            limit=limit,
            on_overflow=self.overflowed.append,
            peer="test-peer",
        )

    async def receive(self, size: int) -> bytes:
        """Exactly ``size`` bytes from the peer's end."""
        loop = asyncio.get_running_loop()
        data = bytearray()
        async with asyncio.timeout(5 * UNIT):
            while len(data) < size:
                chunk = await loop.sock_recv(self.peer, size - len(data))
                if not chunk:
                    raise AssertionError(f"closed after {bytes(data)!r}")
                data += chunk
        return bytes(data)

    async def receive_until_closed(self) -> bytes:
        """Everything the peer's end gets until our end closes."""
        loop = asyncio.get_running_loop()
        data = bytearray()
        async with asyncio.timeout(5 * UNIT):
            while chunk := await loop.sock_recv(self.peer, 65536):
                data += chunk
        return bytes(data)

    def close(self) -> None:
        self.transport.abort()
        self.peer.close()


async def next_iteration() -> None:
    """Return once every callback scheduled so far has run.

    Callbacks run in the order they were scheduled, so when ours runs the
    outbox's flush, scheduled earlier, has run too.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as running:
        yield running


# Writing.


def test_frames_delivered_in_one_iteration_leave_in_one_write(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()))
        stream.deliver(message(b'{"n":1}'))
        stream.heartbeat()
        stream.deliver(message(b'{"n":2}'))
        assert pair.transport.writes == []

        await next_iteration()
        expected = b'\x00\x07{"n":1}' + HEARTBEAT.bare + b'\x00\x07{"n":2}'
        assert pair.transport.writes == [expected]
        received = await pair.receive(len(expected))
        assert FrameDecoder().feed(received) == [b'{"n":1}', b"", b'{"n":2}']
        pair.close()

    runner.run(scenario())


def test_chunked_stream_sends_each_frame_as_one_chunk(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), chunked=True)

        stream.deliver(message(b""))
        stream.deliver(message(b"hi"))
        await next_iteration()

        expected = b"2\r\n\x00\x00\r\n" + b"4\r\n\x00\x02hi\r\n"
        assert pair.transport.writes == [expected]
        assert await pair.receive(len(expected)) == expected
        pair.close()

    runner.run(scenario())


def test_frames_delivered_in_later_iterations_leave_in_later_writes(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()))

        stream.deliver(message(b"1"))
        await next_iteration()
        stream.deliver(message(b"2"))
        await next_iteration()

        assert pair.transport.writes == [b"\x00\x011", b"\x00\x012"]
        assert await pair.receive(6) == b"\x00\x011\x00\x012"
        pair.close()

    runner.run(scenario())


def test_an_idle_streams_heartbeat_is_written_at_once(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()))
        stream.heartbeat()
        assert pair.transport.writes == [HEARTBEAT.bare]
        assert await pair.receive(2) == HEARTBEAT.bare
        pair.close()

    runner.run(scenario())


def test_a_message_published_mid_sweep_joins_streams_not_yet_written(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outbox = Outbox(loop)
        pairs = [await Pair.open() for _ in range(SLICE + 10)]
        streams = [pair.stream(outbox) for pair in pairs]

        def publish_second() -> None:
            for stream in streams:
                stream.deliver(message(b"second"))

        for stream in streams:
            stream.deliver(message(b"first"))
        # Runs right after the first slice, as a publish read between two
        # slices would.
        loop.call_soon(publish_second)
        for _ in range(4):
            await next_iteration()

        first, second = b"\x00\x05first", b"\x00\x06second"
        for pair in pairs[:SLICE]:
            assert pair.transport.writes == [first, second]
        for pair in pairs[SLICE:]:
            assert pair.transport.writes == [first + second]
        for pair in pairs:
            pair.close()

    runner.run(scenario())


def test_one_outbox_flush_writes_each_stream_once(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        outbox = Outbox(asyncio.get_running_loop())
        pairs = [await Pair.open() for _ in range(3)]
        streams = [pair.stream(outbox) for pair in pairs]

        for payload in (b"a", b"b"):
            for stream in streams:
                stream.deliver(message(payload))
        await next_iteration()

        for pair in pairs:
            assert pair.transport.writes == [b"\x00\x01a\x00\x01b"]
            assert await pair.receive(6) == b"\x00\x01a\x00\x01b"
            pair.close()

    runner.run(scenario())


# The bound on unsent data.


def test_queued_bytes_past_the_limit_abort_the_stream_and_report_once(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), limit=16)

        stream.deliver(message(b"x" * 10))
        assert pair.overflowed == []
        stream.deliver(message(b"y" * 10))
        assert pair.overflowed == [stream]
        assert pair.transport.is_closing()

        stream.deliver(message(b"z"))
        await next_iteration()
        assert pair.overflowed == [stream]
        assert pair.transport.writes == []
        assert await pair.receive_until_closed() == b""
        pair.close()

    runner.run(scenario())


def test_buffered_plus_queued_bytes_past_the_limit_abort_at_flush(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), limit=MIB)

        # The peer reads nothing, so most of this stays in the transport.
        pair.transport.real.write(b"\x00" * (8 * MIB))
        assert pair.transport.get_write_buffer_size() > MIB

        stream.deliver(message(b"x"))
        assert pair.overflowed == []
        await next_iteration()

        assert pair.overflowed == [stream]
        assert pair.transport.writes == []
        assert pair.transport.is_closing()
        pair.close()

    runner.run(scenario())


def test_unsent_data_exactly_at_the_limit_is_allowed(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), limit=16)

        for _ in range(10):
            stream.deliver(message(b"x" * 14))
            await next_iteration()
            await pair.receive(16)

        assert pair.overflowed == []
        assert len(pair.transport.writes) == 10
        pair.close()

    runner.run(scenario())


# Detaching and finishing.


def test_detached_stream_ignores_deliveries(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), limit=16)

        stream.detach()
        stream.deliver(message(b"x" * 100))
        await next_iteration()

        assert pair.transport.writes == []
        assert pair.overflowed == []
        assert not pair.transport.is_closing()
        pair.close()

    runner.run(scenario())


def test_detach_drops_frames_queued_before_it(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()))

        stream.deliver(message(b"queued"))
        stream.detach()
        await next_iteration()

        assert pair.transport.writes == []
        pair.close()

    runner.run(scenario())


def test_finish_writes_queued_frames_then_the_last_chunk_and_closes(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), chunked=True)

        stream.deliver(message(b"bye"))
        stream.finish(stream.wire.goodbye)

        received = await pair.receive_until_closed()
        assert received == Frame(b"bye").chunked + b"0\r\n\r\n"
        pair.close()

    runner.run(scenario())


def test_finish_of_a_bare_stream_closes_after_its_frames_without_a_chunk(
    runner: asyncio.Runner,
) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), chunked=False)

        stream.deliver(message(b"bye"))
        stream.finish(stream.wire.goodbye)

        assert await pair.receive_until_closed() == b"\x00\x03bye"
        pair.close()

    runner.run(scenario())


def test_finish_twice_ends_the_body_once(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), chunked=True)

        stream.finish(stream.wire.goodbye)
        stream.finish(stream.wire.goodbye)
        stream.deliver(message(b"late"))
        await next_iteration()

        assert pair.transport.writes == [LAST_CHUNK]
        assert await pair.receive_until_closed() == LAST_CHUNK
        pair.close()

    runner.run(scenario())


def test_finish_after_detach_writes_nothing(runner: asyncio.Runner) -> None:
    async def scenario() -> None:
        pair = await Pair.open()
        stream = pair.stream(Outbox(asyncio.get_running_loop()), chunked=True)

        stream.detach()
        stream.finish(stream.wire.goodbye)

        assert pair.transport.writes == []
        pair.close()

    runner.run(scenario())
