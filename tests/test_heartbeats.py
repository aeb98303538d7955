"""The heartbeat wheel: one timer, each member due once per interval."""

from __future__ import annotations

from rpushd.heartbeats import TICKS_PER_SECOND, HeartbeatWheel


def ticks_until_due(wheel: HeartbeatWheel[str], member: str) -> int:
    for count in range(1, 10 * TICKS_PER_SECOND * 60):
        if member in wheel.tick():
            return count
    raise AssertionError("never due")


def test_a_member_is_first_due_one_full_interval_after_it_was_added() -> None:
    wheel: HeartbeatWheel[str] = HeartbeatWheel(interval_secs=3)
    for _ in range(7):
        wheel.tick()
    wheel.add("stream")
    assert ticks_until_due(wheel, "stream") == 3 * TICKS_PER_SECOND


def test_a_member_is_due_again_every_interval() -> None:
    wheel: HeartbeatWheel[str] = HeartbeatWheel(interval_secs=2)
    wheel.add("stream")
    ticks_until_due(wheel, "stream")
    assert ticks_until_due(wheel, "stream") == 2 * TICKS_PER_SECOND
    assert ticks_until_due(wheel, "stream") == 2 * TICKS_PER_SECOND


def test_members_added_at_different_times_are_spread_over_the_interval() -> None:
    wheel: HeartbeatWheel[int] = HeartbeatWheel(interval_secs=1)
    for member in range(TICKS_PER_SECOND):
        wheel.add(member)
        wheel.tick()
    due = [len(wheel.tick()) for _ in range(TICKS_PER_SECOND)]
    assert due == [1] * TICKS_PER_SECOND


def test_a_removed_member_is_never_due() -> None:
    wheel: HeartbeatWheel[str] = HeartbeatWheel(interval_secs=1)
    wheel.add("gone")
    wheel.add("kept")
    wheel.remove("gone")
    wheel.remove("never added")
    due = set()
    for _ in range(2 * TICKS_PER_SECOND):
        due |= set(wheel.tick())
    assert due == {"kept"}
