"""Channel names and the channel registry, driven by a fake clock."""

from __future__ import annotations

import pytest

from rpushd.channels import ChannelRegistry, is_valid_name
from rpushd.deliveries import Delivery


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A subscriber that remembers every delivery handed to it."""

    def __init__(self) -> None:
        self.frames: list[Delivery] = []

    def deliver(self, delivery: Delivery) -> None:
        self.frames.append(delivery)


def message(channel: str, payload: bytes) -> Delivery:
    return Delivery("0badcafe", 1, channel, payload, 0.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> ChannelRegistry:
    return ChannelRegistry(clock=clock)


# Names.


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "0", "thread-posts:459", "user_7.inbox", ":-_.", "x" * 191],
)
def test_name_of_1_to_191_allowed_characters_is_valid(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 192,
        "a b",
        "a/b",
        "a%2Fb",
        "a*",
        "room\n",
        "\nroom",
        "room\x00",
        "room\t",
        "\u0430",
        "r\u043eom",
        "\uff41",
        "\uff11",
        "\u0661",
        "\u212a",
        "\u00df",
        "\u0131",
        "room\u200b",
    ],
    ids=[
        "empty",
        "192 characters",
        "space",
        "slash",
        "percent",
        "star",
        "trailing newline",
        "leading newline",
        "nul",
        "tab",
        "cyrillic a",
        "cyrillic o inside",
        "fullwidth a",
        "fullwidth digit one",
        "arabic-indic digit",
        "kelvin sign",
        "sharp s",
        "dotless i",
        "zero-width space",
    ],
)
def test_name_with_any_other_character_or_length_is_invalid(name: str) -> None:
    assert not is_valid_name(name)


# Membership.


def test_get_creates_a_channel_once_and_returns_it_again(
    registry: ChannelRegistry,
) -> None:
    channel = registry.get("room")
    assert registry.get("room") is channel
    assert len(registry) == 1
    assert [c.name for c in registry] == ["room"]


def test_subscribe_and_unsubscribe_keep_the_subscriber_count(
    registry: ChannelRegistry,
) -> None:
    room, hall = registry.get("room"), registry.get("hall")
    first, second = Recorder(), Recorder()
    registry.subscribe(room, first)
    registry.subscribe(room, second)
    registry.subscribe(hall, first)
    assert registry.subscriber_count == 3
    assert room.subscribers == {first, second}

    registry.unsubscribe(room, first)
    assert registry.subscriber_count == 2
    assert room.subscribers == {second}


def test_subscribing_twice_counts_once(registry: ChannelRegistry) -> None:
    room, subscriber = registry.get("room"), Recorder()
    registry.subscribe(room, subscriber)
    registry.subscribe(room, subscriber)
    assert registry.subscriber_count == 1


def test_unsubscribing_a_stranger_changes_no_count(registry: ChannelRegistry) -> None:
    room = registry.get("room")
    registry.subscribe(room, Recorder())
    registry.unsubscribe(room, Recorder())
    assert registry.subscriber_count == 1
    assert len(room.subscribers) == 1


# Publishing.


def test_publish_delivers_to_each_subscriber_exactly_once(
    registry: ChannelRegistry,
) -> None:
    room = registry.get("room")
    subscribers = [Recorder() for _ in range(5)]
    for subscriber in subscribers:
        registry.subscribe(room, subscriber)
    frame = message("room", b'{"a":1}')

    assert len(registry.publish(frame).subscribers) == 5
    for subscriber in subscribers:
        assert subscriber.frames == [frame]


def test_publish_reaches_only_the_named_channel(registry: ChannelRegistry) -> None:
    in_room, in_hall = Recorder(), Recorder()
    registry.subscribe(registry.get("room"), in_room)
    registry.subscribe(registry.get("hall"), in_hall)

    registry.publish(message("room", b"1"))
    assert len(in_room.frames) == 1
    assert in_hall.frames == []


def test_publish_without_subscribers_creates_the_channel_and_reaches_none(
    registry: ChannelRegistry,
) -> None:
    assert not registry.publish(message("nobody-home", b"1")).subscribers
    assert [c.name for c in registry] == ["nobody-home"]


def test_publish_hands_every_subscriber_the_same_frame_object(
    registry: ChannelRegistry,
) -> None:
    room = registry.get("room")
    first, second = Recorder(), Recorder()
    registry.subscribe(room, first)
    registry.subscribe(room, second)
    registry.publish(message("room", b"shared"))
    assert first.frames[0] is second.frames[0]


# Idleness and the sweep.


def test_sweep_drops_an_empty_channel_idle_for_exactly_the_ttl(
    registry: ChannelRegistry, clock: Clock
) -> None:
    registry.get("room")
    clock.now += 60
    assert [c.name for c in registry.sweep(60)] == ["room"]
    assert len(registry) == 0


def test_sweep_keeps_an_empty_channel_idle_for_less_than_the_ttl(
    registry: ChannelRegistry, clock: Clock
) -> None:
    registry.get("room")
    clock.now += 59.5
    assert [c.name for c in registry.sweep(60)] == []
    assert len(registry) == 1


def test_sweep_keeps_a_channel_with_subscribers_however_idle(
    registry: ChannelRegistry, clock: Clock
) -> None:
    registry.subscribe(registry.get("room"), Recorder())
    registry.get("empty")
    clock.now += 10_000
    assert [c.name for c in registry.sweep(60)] == ["empty"]
    assert [c.name for c in registry] == ["room"]


@pytest.mark.parametrize("use", ["publish", "get", "unsubscribe"])
def test_use_restarts_the_idle_time(
    registry: ChannelRegistry, clock: Clock, use: str
) -> None:
    room, subscriber = registry.get("room"), Recorder()
    registry.subscribe(room, subscriber)
    if use != "unsubscribe":
        registry.unsubscribe(room, subscriber)
    clock.now += 50

    if use == "publish":
        registry.publish(message("room", b"1"))
    elif use == "get":
        registry.get("room")
    else:
        registry.unsubscribe(room, subscriber)
    clock.now += 50

    assert registry.idle_seconds(room) == 50
    assert [c.name for c in registry.sweep(60)] == []


def test_touch_active_marks_only_channels_with_subscribers_as_used(
    registry: ChannelRegistry, clock: Clock
) -> None:
    active, idle = registry.get("active"), registry.get("idle")
    registry.subscribe(active, Recorder())
    clock.now += 30

    registry.touch_active()
    assert registry.idle_seconds(active) == 0
    assert registry.idle_seconds(idle) == 30


def test_idle_seconds_are_whole_and_never_negative(
    registry: ChannelRegistry, clock: Clock
) -> None:
    room = registry.get("room")
    clock.now += 2.9
    assert registry.idle_seconds(room) == 2
    clock.now -= 10
    assert registry.idle_seconds(room) == 0
