"""History bounds and resume verdicts, driven by a fake clock."""

from __future__ import annotations

import gc

import pytest

from rpushd.channels import Channel
from rpushd.deliveries import Delivery
from rpushd.frames import ENVELOPES
from rpushd.history import OTHER_EPOCH, TOO_OLD, UNKNOWN, History

EPOCH = "0badcafe"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Daemon:
    """The part of the hub that numbers deliveries and records them."""

    def __init__(
        self, size: int = 100, ttl: float = 300.0, max_bytes: int = 2**30
    ) -> None:
        self.clock = Clock()
        self.history = History(size, ttl, max_bytes, clock=self.clock)
        self.position = 0
        self.channels: dict[str, Channel] = {}

    def channel(self, name: str) -> Channel:
        if name not in self.channels:
            self.channels[name] = Channel(name, self.clock.now, self.position)
        return self.channels[name]

    def publish(self, name: str, payload: bytes = b"1") -> Delivery:
        channel = self.channel(name)
        self.position += 1
        delivery = Delivery(EPOCH, self.position, name, payload, self.clock.now)
        self.history.record(channel, delivery)
        return delivery

    def held(self, name: str) -> list[int]:
        return [delivery.seq for delivery in self.channel(name).history]

    def replay(self, name: str, last_id: str) -> tuple[str | None, list[int]]:
        reason, owed = self.history.replay(
            self.channel(name), last_id, EPOCH, self.position
        )
        return reason, [delivery.seq for delivery in owed]


def seen(seq: int) -> str:
    return f"{EPOCH}-{seq}"


# Bounds.


def test_each_channel_holds_at_most_size_deliveries() -> None:
    daemon = Daemon(size=3)
    for _ in range(5):
        daemon.publish("a")
    daemon.publish("b")

    assert daemon.held("a") == [3, 4, 5]
    assert daemon.held("b") == [6]
    assert daemon.channel("a").lost_upto == 2
    assert daemon.channel("b").lost_upto == 5


def test_deliveries_older_than_the_ttl_expire() -> None:
    daemon = Daemon(ttl=10)
    daemon.publish("a")
    daemon.clock.now += 5
    daemon.publish("a")
    daemon.publish("b")

    daemon.clock.now += 5.5
    daemon.history.expire()
    assert daemon.held("a") == [2]
    assert daemon.held("b") == [3]
    assert daemon.channel("a").lost_upto == 1

    daemon.clock.now += 5
    daemon.history.expire()
    assert daemon.held("a") == daemon.held("b") == []
    assert daemon.channel("b").lost_upto == 3
    assert daemon.history.bytes == 0


def test_byte_bound_lets_the_oldest_go_first_across_channels() -> None:
    daemon = Daemon(max_bytes=35)
    for name in ("a", "b", "a", "b"):
        daemon.publish(name, b"x" * 10)

    assert daemon.held("a") == [3]
    assert daemon.held("b") == [2, 4]
    assert daemon.history.bytes == 30
    assert daemon.channel("a").lost_upto == 1
    # "b" was created after 1: whatever came before counts as lost.
    assert daemon.channel("b").lost_upto == 1


def test_byte_bound_counts_the_encodings_made_by_the_fan_out() -> None:
    daemon = Daemon()
    channel = daemon.channel("a")
    daemon.position += 1
    delivery = Delivery(EPOCH, daemon.position, "a", b"12345", daemon.clock.now)
    frame = delivery.encoded(ENVELOPES)

    daemon.history.record(channel, delivery)
    assert daemon.history.bytes == 5 + len(frame)


def test_held_bytes_go_back_to_zero_when_all_is_let_go() -> None:
    daemon = Daemon(size=2, ttl=10)
    for name in ("a", "b", "a", "a", "c"):
        daemon.publish(name, b"x" * 7)
    assert daemon.history.bytes == 4 * 7

    daemon.clock.now += 11
    daemon.history.expire()
    assert daemon.history.bytes == 0


def test_forget_stops_counting_what_a_dropped_channel_held() -> None:
    daemon = Daemon()
    daemon.publish("a", b"x" * 10)
    daemon.publish("b", b"y" * 4)
    daemon.publish("a", b"x" * 10)

    daemon.history.forget(daemon.channel("a"))
    assert daemon.history.bytes == 4
    assert daemon.held("a") == []
    assert daemon.held("b") == [2]

    # What the forgotten channel left behind is skipped, not let go twice.
    daemon.clock.now += 301
    daemon.history.expire()
    assert daemon.history.bytes == 0


def alive_deliveries() -> int:
    gc.collect()
    return sum(isinstance(thing, Delivery) for thing in gc.get_objects())


def test_let_go_deliveries_are_released_while_older_ones_are_held() -> None:
    before = alive_deliveries()
    daemon = Daemon(size=1)
    daemon.publish("quiet")
    for _ in range(1000):
        daemon.publish("busy", bytes(1000))

    # The bytes bound counts one delivery of each channel, so memory must
    # hold no more: "quiet" must not keep the let-go "busy" ones alive.
    assert daemon.history.bytes == 1 + 1000
    assert alive_deliveries() - before <= 2


def test_size_zero_holds_nothing_but_tracks_what_was_lost() -> None:
    daemon = Daemon(size=0)
    daemon.publish("a")
    daemon.publish("a")

    assert daemon.held("a") == []
    assert daemon.history.bytes == 0
    assert daemon.channel("a").lost_upto == 2
    assert daemon.replay("a", seen(1)) == (TOO_OLD, [])
    assert daemon.replay("a", seen(2)) == (None, [])


# Replay verdicts.


def test_replay_sends_only_what_is_newer_than_the_last_id() -> None:
    daemon = Daemon()
    for name in ("a", "b", "a", "a", "b"):
        daemon.publish(name)

    assert daemon.replay("a", seen(1)) == (None, [3, 4])
    assert daemon.replay("a", seen(3)) == (None, [4])
    assert daemon.replay("a", seen(4)) == (None, [])
    assert daemon.replay("a", seen(5)) == (None, [])
    assert daemon.replay("b", seen(2)) == (None, [5])


def test_replay_from_the_start_of_the_run_sends_everything() -> None:
    daemon = Daemon()
    daemon.publish("a")
    daemon.publish("a")
    assert daemon.replay("a", seen(0)) == (None, [1, 2])


def test_replay_on_a_channel_without_history_after_its_creation_is_no_gap() -> None:
    daemon = Daemon()
    daemon.publish("a")
    assert daemon.replay("new", seen(1)) == (None, [])


def test_replay_behind_what_the_channel_lost_is_too_old() -> None:
    daemon = Daemon(size=3)
    for _ in range(5):
        daemon.publish("a")

    assert daemon.replay("a", seen(0)) == (TOO_OLD, [3, 4, 5])
    assert daemon.replay("a", seen(1)) == (TOO_OLD, [3, 4, 5])
    # Having seen the last one let go, nothing is missing.
    assert daemon.replay("a", seen(2)) == (None, [3, 4, 5])


def test_replay_after_the_ttl_is_too_old() -> None:
    daemon = Daemon(ttl=10)
    daemon.publish("a")
    daemon.publish("a")
    assert daemon.replay("a", seen(1)) == (None, [2])

    daemon.clock.now += 11
    assert daemon.replay("a", seen(1)) == (TOO_OLD, [])


def test_replay_for_a_channel_created_after_the_last_id_is_too_old() -> None:
    daemon = Daemon()
    daemon.publish("a")
    daemon.publish("a")
    daemon.publish("late")
    # The channel may have existed before, been swept and come back.
    assert daemon.replay("late", seen(1)) == (TOO_OLD, [3])
    assert daemon.replay("late", seen(2)) == (None, [3])


def test_replay_from_another_run_is_other_epoch_with_everything_held() -> None:
    daemon = Daemon()
    daemon.publish("a")
    daemon.publish("a")
    assert daemon.replay("a", "deadbeef-1") == (OTHER_EPOCH, [1, 2])
    assert daemon.replay("a", "deadbeef-99") == (OTHER_EPOCH, [1, 2])


@pytest.mark.parametrize(
    "last_id",
    ["", "nonsense", "0BADCAFE-1", "0badcafe-01", "0badcafe-3", "0badcafe-999"],
    ids=["empty", "garbage", "uppercase", "leading zero", "next", "far future"],
)
def test_replay_from_a_malformed_or_future_id_is_unknown(last_id: str) -> None:
    daemon = Daemon()
    daemon.publish("a")
    daemon.publish("a")
    assert daemon.replay("a", last_id) == (UNKNOWN, [1, 2])
