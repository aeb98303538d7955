"""Which streams are owed a heartbeat, on one timer for all of them.

A heartbeat goes out once per interval, counted from when each stream
opened (PROTOCOL.md: "one heartbeat at once, then every interval"). One
timer ticks :data:`TICKS_PER_SECOND` times a second and each tick serves
one slot of a wheel; a stream sits in the slot that comes round one full
interval after it opened. That keeps every stream's period exact to a
tick, and spreads the writes of many streams evenly over the interval
instead of bursting them all at once.

Pure bookkeeping: no clock and no I/O; the server calls :meth:`tick`.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Generic, TypeVar

TICKS_PER_SECOND = 10

Member = TypeVar("Member")


class HeartbeatWheel(Generic[Member]):
    """Slots of members, one slot served per tick."""

    def __init__(self, interval_secs: int) -> None:
        self._slots: list[set[Member]] = [
            set() for _ in range(interval_secs * TICKS_PER_SECOND)
        ]
        self._where: dict[Member, int] = {}
        self._position = 0

    def add(self, member: Member) -> None:
        """Place ``member`` one full interval away from now."""
        slot = self._position
        self._slots[slot].add(member)
        self._where[member] = slot

    def remove(self, member: Member) -> None:
        """Forget ``member``; unknown members are ignored."""
        slot = self._where.pop(member, None)
        if slot is not None:
            self._slots[slot].discard(member)

    def tick(self) -> Set[Member]:
        """Advance one tick; return the members whose heartbeat is due."""
        self._position = (self._position + 1) % len(self._slots)
        return self._slots[self._position]
