"""Delivering frames to open streams.

The hot path of the daemon. A published frame is already encoded (see
:class:`rpushd.frames.Frame`); each stream appends a reference to the shared
bytes to its own small list, and once per event-loop iteration the
:class:`Outbox` writes each stream's list with a single call. Frames that
arrive together therefore leave together, in one system call per stream,
without waiting for a timer.

Unsent data is bounded: a stream whose queued plus buffered bytes pass the
limit is dropped, counted and logged, so that its client reconnects and
knows it may have missed something (PROTOCOL.md, "Deliberate differences").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from rpushd.channels import Channel
from rpushd.frames import LAST_CHUNK, Frame

logger = logging.getLogger("rpushd.streams")


class Outbox:
    """Writes every stream's queued frames once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[Stream] = []

    def mark(self, stream: Stream) -> None:
        """Have ``stream`` flushed at the end of this loop iteration."""
        if not self._waiting:
            self._loop.call_soon(self.flush)
        self._waiting.append(stream)

    def flush(self) -> None:
        """Write what every marked stream is owed."""
        waiting, self._waiting = self._waiting, []
        for stream in waiting:
            stream.flush()


class Stream:
    """One subscriber's open response body on one channel.

    ``chunked`` says whether frames travel as HTTP/1.1 chunks or bare on a
    close-delimited HTTP/1.0 body. ``on_overflow`` is called once when the
    unsent data passes ``limit``, after the transport has been aborted.
    """

    __slots__ = (
        "transport",
        "channel",
        "peer",
        "_chunked",
        "_outbox",
        "_limit",
        "_on_overflow",
        "_queue",
        "_queued_bytes",
        "_open",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        channel: Channel,
        *,
        chunked: bool,
        outbox: Outbox,
        limit: int,
        on_overflow: Callable[[Stream], None],
        peer: str = "",
    ) -> None:
        self.transport = transport
        self.channel = channel
        self.peer = peer
        self._chunked = chunked
        self._outbox = outbox
        self._limit = limit
        self._on_overflow = on_overflow
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._open = True

    # Delivery, called by the fan-out and the heartbeat timer.

    def deliver(self, frame: Frame) -> None:
        """Queue ``frame``; it is written at the end of this loop iteration."""
        if not self._open:
            return

        data = frame.chunked if self._chunked else frame.bare
        if not self._queue:
            self._outbox.mark(self)
        self._queue.append(data)
        self._queued_bytes += len(data)

        if self._queued_bytes > self._limit:
            self._overflow()

    def flush(self) -> None:
        """Write everything queued in one call, unless the bound is passed."""
        if not self._open or not self._queue:
            return

        if self.transport.get_write_buffer_size() + self._queued_bytes > self._limit:
            self._overflow()
            return

        queue = self._queue
        self.transport.write(queue[0] if len(queue) == 1 else b"".join(queue))
        self._queue = []
        self._queued_bytes = 0

    # Ending the stream.

    def finish(self) -> None:
        """Flush, end the body properly and close (daemon shutting down)."""
        if not self._open:
            return

        self.flush()
        if self._open:
            if self._chunked:
                self.transport.write(LAST_CHUNK)
            self.transport.close()
        self._open = False

    def detach(self) -> None:
        """Stop delivering; the connection is gone."""
        self._open = False
        self._queue = []
        self._queued_bytes = 0

    def _overflow(self) -> None:
        unsent = self.transport.get_write_buffer_size() + self._queued_bytes
        self.detach()
        self.transport.abort()
        logger.warning(
            "disconnected slow subscriber %s on channel %s: %d bytes unsent "
            "(RPUSHD_MAX_PENDING_BYTES=%d)",
            self.peer,
            self.channel.name,
            unsent,
            self._limit,
        )
        self._on_overflow(self)
