"""Channels and their subscribers (PROTOCOL.md, "Channels").

A channel springs into existence on first use and is forgotten by a sweep
once it has had no subscribers and no use for the idle TTL. Publishing,
delivering a frame, a heartbeat and a subscriber leaving all count as use.

The registry only keeps sets; delivering bytes is the subscriber's business
(see :mod:`rpushd.streams`). Nothing here blocks or awaits.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from rpushd.deliveries import Delivery

# ASCII only: str.isalnum() and \w would admit look-alike letters.
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9:._-]{1,191}")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a legal channel name."""
    return _CHANNEL_NAME.fullmatch(name) is not None


class Subscriber(Protocol):
    """Anything that can be handed a delivery without awaiting."""

    def deliver(self, delivery: Delivery) -> None: ...


class Channel:
    """A named set of subscribers, its recent messages, when it was used.

    ``history`` and ``lost_upto`` belong to :class:`rpushd.history.History`;
    a new channel may have existed before (and been swept), so whatever was
    published before it was created counts as possibly lost.
    """

    __slots__ = ("name", "subscribers", "last_used", "history", "lost_upto")

    def __init__(self, name: str, now: float, lost_upto: int = 0) -> None:
        self.name = name
        self.subscribers: set[Subscriber] = set()
        self.last_used = now
        self.history: deque[Delivery] = deque()
        self.lost_upto = lost_upto


class ChannelRegistry:
    """Every channel the daemon holds, by name."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        position: Callable[[], int] = lambda: 0,
    ) -> None:
        self._clock = clock
        self._position = position
        self._channels: dict[str, Channel] = {}
        self.subscriber_count = 0

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels.values())

    def get(self, name: str) -> Channel:
        """The channel called ``name``, created if needed, marked as used."""
        now = self._clock()
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(name, now, self._position())
        channel.last_used = now
        return channel

    def subscribe(self, channel: Channel, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to ``channel`` (one returned by :meth:`get`)."""
        if subscriber not in channel.subscribers:
            channel.subscribers.add(subscriber)
            self.subscriber_count += 1

    def unsubscribe(self, channel: Channel, subscriber: Subscriber) -> None:
        """Remove ``subscriber``; leaving counts as use of the channel."""
        if subscriber in channel.subscribers:
            channel.subscribers.discard(subscriber)
            self.subscriber_count -= 1
        channel.last_used = self._clock()

    def publish(self, delivery: Delivery, channel: Channel | None = None) -> Channel:
        """Hand ``delivery`` to every subscriber of its channel.

        ``channel`` spares the lookup when the caller just made it.
        Subscribers must not leave the set synchronously from ``deliver``:
        a disconnect is noticed later, from the transport's callback.
        """
        if channel is None:
            channel = self.get(delivery.channel)
        for subscriber in channel.subscribers:
            subscriber.deliver(delivery)
        return channel

    def touch_active(self) -> None:
        """Mark every channel with subscribers as used (a heartbeat went out)."""
        now = self._clock()
        for channel in self._channels.values():
            if channel.subscribers:
                channel.last_used = now

    def sweep(self, idle_ttl: float) -> list[Channel]:
        """Forget channels with no subscribers unused for ``idle_ttl``."""
        cutoff = self._clock() - idle_ttl
        idle = [
            channel
            for channel in self._channels.values()
            if not channel.subscribers and channel.last_used <= cutoff
        ]
        for channel in idle:
            del self._channels[channel.name]
        return idle

    def idle_seconds(self, channel: Channel) -> int:
        """Whole seconds since ``channel`` was last used."""
        return max(0, int(self._clock() - channel.last_used))
