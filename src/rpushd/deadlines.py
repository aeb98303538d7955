"""Deadlines of many connections, checked by one periodic timer.

A connection waiting for a request (or lingering before it closes) needs
to be woken once a deadline passes. Arming an event-loop timer for every
request costs a timer handle and a heap operation each time; a keep-alive
publisher makes thousands of requests a second. Here a deadline is one
dictionary entry, and the server asks a few times a second which have
passed. Precision is that period, which is plenty for timeouts counted in
seconds.

Pure bookkeeping: no clock and no I/O; the caller passes ``now``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

Member = TypeVar("Member")


class Deadlines(Generic[Member]):
    """At most one deadline per member."""

    def __init__(self) -> None:
        self._due: dict[Member, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def set(self, member: Member, when: float) -> None:
        """Give ``member`` the deadline ``when``, replacing any other."""
        self._due[member] = when

    def clear(self, member: Member) -> None:
        """Drop ``member``'s deadline, if it has one."""
        self._due.pop(member, None)

    def passed(self, now: float) -> list[Member]:
        """Remove and return the members whose deadline is ``now`` or earlier."""
        due = [member for member, when in self._due.items() if when <= now]
        for member in due:
            del self._due[member]
        return due
