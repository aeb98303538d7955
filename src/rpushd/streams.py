"""Delivering to open streams.

The hot path of the daemon. A published message is encoded once per kind
of stream (see :class:`rpushd.deliveries.Delivery`); each stream appends a
reference to the shared bytes to its own small list, and the
:class:`Outbox` writes each stream's list with a single call. Items that
arrive before a stream's turn therefore leave together, in one system call
per stream, without waiting for a timer.

The outbox is a continuous first-in, first-out sweep, written a slice at a
time with the event loop let through between slices. A write costs the
kernel several microseconds on loopback (bench/syscall_floor.py), so one
pass over 10,000 streams takes tens of milliseconds; a message published
meanwhile is read between two slices and reaches every stream the sweep
has not yet written in the same pass. No message waits for more than about
one pass, however fast they come.

Unsent data is bounded: a stream whose queued plus buffered bytes pass the
limit is ended, counted and logged, so that its client reconnects and
knows it may have missed something (PROTOCOL.md, "Deliberate differences").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable

from rpushd.channels import Channel
from rpushd.deliveries import Delivery, Wire

logger = logging.getLogger("rpushd.streams")

# How long a stream ended for falling behind may take to drain its goodbye.
OVERFLOW_LINGER_SECS = 2.0

# SO_LINGER on, with a zero timeout: closing sends a reset at once.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)

# Streams written per turn of the event loop: a few milliseconds of writes,
# after which publishes that arrived meanwhile are read.
SLICE = 256


class Outbox:
    """Writes streams' queued items, oldest first, a slice per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: deque[Stream] = deque()

    def mark(self, stream: Stream) -> None:
        """Have ``stream`` written in its turn (it just got its first item)."""
        if not self._waiting:
            self.loop.call_soon(self._write_slice)
        self._waiting.append(stream)

    def flush(self) -> None:
        """Write what every marked stream is owed, now (shutting down)."""
        while self._waiting:
            self._waiting.popleft().flush()

    def _write_slice(self) -> None:
        waiting = self._waiting
        for _ in range(min(SLICE, len(waiting))):
            waiting.popleft().flush()
        if waiting:
            self.loop.call_soon(self._write_slice)


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
        """Send this wire's heartbeat.

        An idle stream (the common case) gets it written at once: the
        outbox's turn would end in the same single write, later.
        """
        if not self._open:
            return
        heartbeat = self.wire.heartbeat
        if self._queue:
            self.send(heartbeat)
        elif self.transport.get_write_buffer_size() + len(heartbeat) > self.limit:
            self._overflow()
        else:
            self.transport.write(heartbeat)

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

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, discarding unsent data.

        A plain abort closes the socket with a FIN, and the kernel then
        keeps the unsent megabytes for minutes, trying to deliver them to
        a client that does not read.
        """
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self.transport.abort()

    def _overflow(self) -> None:
        unsent = self.transport.get_write_buffer_size() + self._queued_bytes
        self.detach()
        goodbye = self.wire.overflow
        if goodbye is None:
            self._reset()
        else:
            # The goodbye waits behind what is buffered; a client that does
            # not read it in time is cut off all the same.
            self.transport.write(goodbye)
            self.transport.close()
            self._outbox.loop.call_later(OVERFLOW_LINGER_SECS, self._reset)

        logger.warning(
            "disconnected slow subscriber %s on %s: %d bytes unsent "
            "(RPUSHD_MAX_PENDING_BYTES=%d)",
            self.peer,
            ", ".join(channel.name for channel in self.channels),
            unsent,
            self.limit,
        )
        self._on_overflow(self)
