"""Delivering to open streams.

The hot path of the daemon. A published message is encoded once per kind
of stream (see :class:`rpushd.deliveries.Delivery`); each stream appends a
reference to the shared bytes to its own small list, and once per
event-loop iteration the :class:`Outbox` writes each stream's list with a
single call. Items that arrive together therefore leave together, in one
system call per stream, without waiting for a timer.

Unsent data is bounded: a stream whose queued plus buffered bytes pass the
limit is ended, counted and logged, so that its client reconnects and
knows it may have missed something (PROTOCOL.md, "Deliberate differences").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from rpushd.channels import Channel
from rpushd.deliveries import Delivery, Wire

logger = logging.getLogger("rpushd.streams")

# How long a stream ended for falling behind may take to drain its goodbye.
OVERFLOW_LINGER_SECS = 2.0


class Outbox:
    """Writes every stream's queued items once per loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: list[Stream] = []

    def mark(self, stream: Stream) -> None:
        """Have ``stream`` flushed at the end of this loop iteration."""
        if not self._waiting:
            self.loop.call_soon(self.flush)
        self._waiting.append(stream)

    def flush(self) -> None:
        """Write what every marked stream is owed."""
        waiting, self._waiting = self._waiting, []
        for stream in waiting:
            stream.flush()


class Stream:
    """One subscriber's open response, on one or more channels.

    ``wire`` says how items are encoded for it. ``on_overflow`` is called
    once when the unsent data passes ``limit``, after the stream ended.
    """

    __slots__ = (
        "transport",
        "wire",
        "channels",
        "peer",
        "limit",
        "_outbox",
        "_on_overflow",
        "_queue",
        "_queued_bytes",
        "_open",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        wire: Wire,
        *,
        outbox: Outbox,
        limit: int,
        on_overflow: Callable[[Stream], None],
        peer: str = "",
    ) -> None:
        self.transport = transport
        self.wire = wire
        self.channels: list[Channel] = []
        self.peer = peer
        self.limit = limit
        self._outbox = outbox
        self._on_overflow = on_overflow
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._open = True

    # Delivery, called by the fan-out and the heartbeat timer.

    def deliver(self, delivery: Delivery) -> None:
        """Queue a published message for this loop iteration's flush."""
        if self._open:
            self.send(delivery.encoded(self.wire))

    def heartbeat(self) -> None:
        """Queue this wire's heartbeat."""
        if self._open:
            self.send(self.wire.heartbeat)

    def send(self, data: bytes) -> None:
        """Queue encoded bytes; they are written at the end of this iteration."""
        if not self._queue:
            self._outbox.mark(self)
        self._queue.append(data)
        self._queued_bytes += len(data)

        if self._queued_bytes > self.limit:
            self._overflow()

    def flush(self) -> None:
        """Write everything queued in one call, unless the bound is passed."""
        if not self._open or not self._queue:
            return

        if self.transport.get_write_buffer_size() + self._queued_bytes > self.limit:
            self._overflow()
            return

        queue = self._queue
        self.transport.write(queue[0] if len(queue) == 1 else b"".join(queue))
        self._queue = []
        self._queued_bytes = 0

    # Ending the stream.

    def finish(self, farewell: bytes) -> None:
        """Flush, write ``farewell`` (one of the wire's endings), close."""
        if not self._open:
            return

        self.flush()
        if self._open:
            self.transport.write(farewell)
            self.transport.close()
        self._open = False

    def detach(self) -> None:
        """Stop delivering; the connection is gone or going."""
        self._open = False
        self._queue = []
        self._queued_bytes = 0

    def _overflow(self) -> None:
        unsent = self.transport.get_write_buffer_size() + self._queued_bytes
        self.detach()
        goodbye = self.wire.overflow
        if goodbye is None:
            self.transport.abort()
        else:
            # The goodbye waits behind what is buffered; a client that does
            # not read it in time is cut off all the same.
            self.transport.write(goodbye)
            self.transport.close()
            self._outbox.loop.call_later(OVERFLOW_LINGER_SECS, self.transport.abort)

        logger.warning(
            "disconnected slow subscriber %s on %s: %d bytes unsent "
            "(RPUSHD_MAX_PENDING_BYTES=%d)",
            self.peer,
            ", ".join(channel.name for channel in self.channels),
            unsent,
            self.limit,
        )
        self._on_overflow(self)
