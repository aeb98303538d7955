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
from collections.abc import Callable
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
        self._clock = clock
        # Every held delivery in publish order, with its channel; entries
        # whose delivery a channel already let go are skipped when reached.
        self._oldest_first: deque[tuple[Channel, Delivery]] = deque()

    def record(self, channel: Channel, delivery: Delivery) -> None:
        """Hold ``delivery`` (after its fan-out, so its encodings count)."""
        if self.size == 0:
            channel.lost_upto = delivery.seq
            return

        delivery.held_bytes = delivery.footprint()
        channel.history.append(delivery)
        self._oldest_first.append((channel, delivery))
        self.bytes += delivery.held_bytes
        if len(channel.history) > self.size:
            self._let_go(channel)
        self.expire()

    def expire(self) -> None:
        """Drop what is older than the TTL, then the oldest over the bytes."""
        cutoff = self._clock() - self.ttl
        queue = self._oldest_first
        while queue:
            channel, delivery = queue[0]
            held = channel.history and channel.history[0] is delivery
            if held and delivery.published_at > cutoff and self.bytes <= self.max_bytes:
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
