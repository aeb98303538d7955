"""Recent messages of every channel, for streams that resume.

Each channel keeps its newest deliveries in a deque, at most ``size`` of
them. Across all channels, deliveries older than ``ttl`` are dropped, and
the oldest go first when the total passes ``max_bytes``. A channel also
remembers ``lost_upto``: the highest sequence number that it may once have
held and no longer does. A client that last saw a number below it may have
missed something, and is told so (docs/STREAMS.md, "Resume").

Pure bookkeeping on the event loop thread: no I/O, the clock is injected.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rpushd.deliveries import Delivery, parse_id

if TYPE_CHECKING:
    from rpushd.channels import Channel

TOO_OLD = "too_old"
OTHER_EPOCH = "other_epoch"
UNKNOWN = "unknown"


class History:
    """The bounds on every channel's history, and resuming from it."""

    def __init__(
        self,
        size: int,
        ttl: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0
        self.held = 0
        self._clock = clock
        # Every held delivery's channel and number, in publish order. Only
        # numbers: an entry whose delivery a channel already let go (its
        # count bound) is skipped when reached, and must not keep the
        # payload alive until then.
        self._oldest_first: deque[tuple[Channel, int]] = deque()

    def record(self, channel: Channel, delivery: Delivery) -> None:
        """Hold ``delivery`` (after its fan-out, so its encodings count)."""
        if self.size == 0:
            channel.lost_upto = delivery.seq
            return

        delivery.held_bytes = delivery.footprint()
        channel.history.append(delivery)
        self._oldest_first.append((channel, delivery.seq))
        self.bytes += delivery.held_bytes
        self.held += 1
        if len(channel.history) > self.size:
            self._let_go(channel)
        self.expire()
        self._compact()

    def account(self, deliveries: Iterable[Delivery]) -> None:
        """Count encodings made for held deliveries since they were recorded.

        A replay encodes held messages for the resuming stream's wire; those
        bytes are held too, and count against ``max_bytes``.
        """
        for delivery in deliveries:
            if delivery.held_bytes:
                footprint = delivery.footprint()
                self.bytes += footprint - delivery.held_bytes
                delivery.held_bytes = footprint
        self.expire()

    def expire(self) -> None:
        """Drop what is older than the TTL, then the oldest over the bytes."""
        cutoff = self._clock() - self.ttl
        queue = self._oldest_first
        while queue:
            channel, seq = queue[0]
            history = channel.history
            held = bool(history) and history[0].seq == seq
            if (
                held
                and history[0].published_at > cutoff
                and self.bytes <= self.max_bytes
            ):
                break
            queue.popleft()
            if held:
                self._let_go(channel)

    def forget(self, channel: Channel) -> None:
        """A channel is being dropped: stop counting what it held."""
        while channel.history:
            self._let_go(channel)

    def replay(
        self, channel: Channel, last_id: str, epoch: str, position: int
    ) -> tuple[str | None, list[Delivery]]:
        """What a client that last saw ``last_id`` is owed from ``channel``.

        Returns a gap reason (or ``None``) and the held deliveries to send.
        With a gap, everything held is sent: the client cannot have it.
        """
        self.expire()
        parsed = parse_id(last_id)
        if parsed is None:
            reason: str | None = UNKNOWN
        elif parsed[0] != epoch:
            reason = OTHER_EPOCH
        elif parsed[1] > position:
            reason = UNKNOWN
        elif parsed[1] < channel.lost_upto:
            reason = TOO_OLD
        else:
            seen = parsed[1]
            return None, [d for d in channel.history if d.seq > seen]
        return reason, list(channel.history)

    def _let_go(self, channel: Channel) -> None:
        delivery = channel.history.popleft()
        channel.lost_upto = max(channel.lost_upto, delivery.seq)
        self.bytes -= delivery.held_bytes
        delivery.held_bytes = 0
        self.held -= 1

    def _compact(self) -> None:
        # A channel's count bound lets go of its oldest message while older
        # ones of other channels are still held, so the publish-order queue
        # keeps entries it will only skip. Rebuilding it once they are the
        # majority keeps memory bounded by what is held, at a cost spread
        # over the records that made them.
        queue = self._oldest_first
        if len(queue) <= 2 * self.held + 1024:
            return
        self._oldest_first = deque(
            (channel, seq)
            for channel, seq in queue
            if channel.history and channel.history[0].seq <= seq
        )
