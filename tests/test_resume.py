"""Message ids, history and resume (docs/STREAMS.md), against the real daemon.

Most tests share one daemon with the default 15 s heartbeat, so that no
heartbeat falls between the bytes a test compares; each uses channels of
its own. Tests that need other settings start their own daemon.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import UNIT, Daemon, make_token, wait_until
from subscribers import FrameStream, Publisher, open_envelopes, open_many

ID = re.compile(r"([0-9a-f]{8})-([1-9][0-9]*)")


@pytest.fixture(scope="module")
def quiet() -> Iterator[Daemon]:
    """A daemon shared by this module's tests, heartbeat at the default."""
    with Daemon() as running:
        yield running


@pytest.fixture
def publisher(quiet: Daemon) -> Iterator[Publisher]:
    publisher = Publisher(quiet.port)
    yield publisher
    publisher.close()


def seq(message_id: str) -> int:
    match = ID.fullmatch(message_id)
    assert match, message_id
    return int(match.group(2))


def epoch(message_id: str) -> str:
    return message_id.split("-")[0]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def read_exactly(stream: FrameStream, size: int) -> bytes:
    """The first ``size`` bytes of the body, waiting for them if needed."""
    deadline = time.monotonic() + 5 * UNIT
    while len(stream.raw) < size:
        assert time.monotonic() < deadline, bytes(stream.raw)
        stream.sock.settimeout(deadline - time.monotonic())
        data = stream.sock.recv(65536)
        assert data, bytes(stream.raw)
        stream._absorb(data)
    return bytes(stream.raw)


def opening(stream: FrameStream) -> dict[str, Any]:
    """The hello, which must be the first frame."""
    assert stream.status == 200, stream.head
    hello = json.loads(stream.next_frame())
    assert hello["type"] == "hello", hello
    return dict(hello)


def no_more_frames(stream: FrameStream) -> None:
    """Nothing but heartbeats is received or waiting to be read."""
    with pytest.raises(TimeoutError):
        stream.next_message(timeout=0.2 * UNIT)


def no_more_bytes(stream: FrameStream) -> None:
    stream.sock.settimeout(0.2 * UNIT)
    with pytest.raises(TimeoutError):
        stream.sock.recv(1)


# Ids on publish.


def test_publish_with_return_id_answers_200_with_the_id(quiet: Daemon) -> None:
    reply = quiet.request(
        "POST",
        "/api/publish",
        {"channel": "ids", "message": 1, "return_id": True},
        auth=True,
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert list(reply.json()) == ["id"]
    assert ID.fullmatch(reply.json()["id"])


@pytest.mark.parametrize("body", [{}, {"return_id": False}])
def test_publish_without_return_id_still_answers_204(
    quiet: Daemon, body: dict[str, Any]
) -> None:
    reply = quiet.request(
        "POST", "/api/publish", {"channel": "ids", "message": 1, **body}, auth=True
    )
    assert reply.status == 204
    assert reply.body == b""


@pytest.mark.parametrize("value", ["true", 1, 0, [True]])
def test_return_id_must_be_a_boolean(quiet: Daemon, value: Any) -> None:
    before = quiet.stats()["publish_requests_total"]
    reply = quiet.request(
        "POST",
        "/api/publish",
        {"channel": "ids", "message": 1, "return_id": value},
        auth=True,
    )
    assert reply.status == 422
    assert "error" in reply.json()
    assert quiet.stats()["publish_requests_total"] == before


def test_ids_increase_across_channels_in_publish_order(
    publisher: Publisher,
) -> None:
    ids = [publisher.publish(name, 1) for name in ("x1", "x2", "x1", "x3", "x2")]
    numbers = [seq(message_id) for message_id in ids]
    assert numbers == list(range(numbers[0], numbers[0] + 5))
    assert len({epoch(message_id) for message_id in ids}) == 1


# The envelope stream.


def test_envelope_stream_opens_with_hello(quiet: Daemon, publisher: Publisher) -> None:
    newest = publisher.publish("hello-other", 1)
    stream = open_envelopes(quiet.port, "hello")
    assert stream.head["content-type"] == "application/octet-stream"

    assert opening(stream) == {
        "type": "hello",
        "heartbeat_secs": 15,
        "epoch": epoch(newest),
        "last_id": newest,
        "replay": 0,
    }


def test_envelope_stream_carries_message_envelopes(
    quiet: Daemon, publisher: Publisher
) -> None:
    stream = open_envelopes(quiet.port, "env")
    opening(stream)
    first = publisher.publish("env", {"text": "hé", "n": [1, 2]})
    second = publisher.publish("env", "two")

    assert stream.next_frame() == (
        b'{"type":"message","id":"%s","channel":"env",'
        b'"message":{"text":"h\xc3\xa9","n":[1,2]}}' % first.encode()
    )
    assert stream.next_envelope() == {
        "type": "message",
        "id": second,
        "channel": "env",
        "message": "two",
    }


def test_envelope_stream_without_last_id_starts_live(
    quiet: Daemon, publisher: Publisher
) -> None:
    publisher.publish("live", "old")
    stream = open_envelopes(quiet.port, "live")
    opening(stream)
    new = publisher.publish("live", "new")
    assert stream.next_envelope()["id"] == new


def test_envelope_stream_bytes_are_chunks_of_frames(
    quiet: Daemon, publisher: Publisher
) -> None:
    stream = open_envelopes(quiet.port, "rawenv")
    hello = stream.next_frame()
    published = publisher.publish("rawenv", 7)
    envelope = b'{"type":"message","id":"%s","channel":"rawenv","message":7}' % (
        published.encode()
    )
    expected = chunk(frame(hello)) + chunk(frame(envelope))
    assert read_exactly(stream, len(expected)) == expected


def test_envelope_stream_heartbeats_are_zero_length_frames() -> None:
    with Daemon(heartbeat_secs="1") as daemon:
        stream = open_envelopes(daemon.port, "beat")
        opening(stream)
        assert stream.next_frame(timeout=3 * UNIT) == b""
        assert stream.next_frame(timeout=3 * UNIT) == b""
        assert b"2\r\n\x00\x00\r\n" in stream.raw


def test_envelope_stream_over_http10_is_close_delimited(
    quiet: Daemon, publisher: Publisher
) -> None:
    stream = open_envelopes(quiet.port, "env10", http10=True)
    assert "transfer-encoding" not in stream.head
    hello = stream.next_frame()
    published = publisher.publish("env10", 1)
    envelope = b'{"type":"message","id":"%s","channel":"env10","message":1}' % (
        published.encode()
    )
    expected = frame(hello) + frame(envelope)
    assert read_exactly(stream, len(expected)) == expected


def test_envelope_stream_ends_with_a_close_envelope_on_shutdown() -> None:
    with Daemon() as daemon:
        chunked = open_envelopes(daemon.port, "bye")
        bare = open_envelopes(daemon.port, "bye", http10=True)
        opening(chunked)
        opening(bare)

        assert daemon.stop() == 0
        goodbye = frame(b'{"type":"close","reason":"shutdown"}')
        assert chunked.read_to_end().endswith(chunk(goodbye) + b"0\r\n\r\n")
        assert bare.read_to_end().endswith(goodbye)


@pytest.mark.parametrize(
    "body",
    [
        {"last_id": "0badcafe-1"},
        {"last_id": "0badcafe-1", "envelope": False},
        {"envelope": "true"},
        {"envelope": 1},
        {"envelope": True, "last_id": 5},
        {"envelope": True, "last_id": ["0badcafe-1"]},
    ],
    ids=[
        "last_id without envelope",
        "last_id with envelope false",
        "envelope string",
        "envelope number",
        "last_id number",
        "last_id list",
    ],
)
def test_envelope_options_of_the_wrong_shape_answer_422(
    quiet: Daemon, body: dict[str, Any]
) -> None:
    before = quiet.stats()["stream_connections_total"]
    stream = FrameStream.post(
        quiet.port, "/api/stream/shape", {"token": make_token("shape"), **body}
    )
    assert stream.status == 422
    assert quiet.stats()["stream_connections_total"] == before


# The original stream is untouched.

STREAM_HEADER_NAMES = {
    "date",
    "content-type",
    "cache-control",
    "pragma",
    "expires",
    "x-content-type-options",
    "x-accel-buffering",
    "transfer-encoding",
}


@pytest.mark.parametrize("body", [{}, {"envelope": False}], ids=["plain", "false"])
def test_original_stream_is_byte_for_byte_unchanged(
    quiet: Daemon, publisher: Publisher, body: dict[str, Any]
) -> None:
    publisher.publish("orig", "held before")
    stream = FrameStream.post(
        quiet.port, "/api/stream/orig", {"token": make_token("orig"), **body}
    )
    assert stream.status == 200
    assert set(stream.head) == STREAM_HEADER_NAMES
    assert stream.head["content-type"] == "application/octet-stream"
    assert stream.next_frame() == b""

    publisher.publish("orig", {"a": 1})
    quiet.publish("orig", "é")
    expected = b'2\r\n\x00\x00\r\n9\r\n\x00\x07{"a":1}\r\n6\r\n\x00\x04"\xc3\xa9"\r\n'
    assert read_exactly(stream, len(expected)) == expected
    no_more_bytes(stream)


def test_original_http10_stream_is_byte_for_byte_unchanged(
    quiet: Daemon, publisher: Publisher
) -> None:
    stream = FrameStream.post(
        quiet.port, "/api/stream/orig10", {"token": make_token("orig10")}, http10=True
    )
    assert stream.status == 200
    publisher.publish("orig10", [1])
    expected = b"\x00\x00\x00\x03[1]"
    assert read_exactly(stream, len(expected)) == expected


# Resume.


def test_resume_sends_exactly_the_messages_after_the_last_id_then_live(
    quiet: Daemon, publisher: Publisher
) -> None:
    ids = []
    for number in range(10):
        ids.append(publisher.publish("resume", {"n": number}))
        publisher.publish("resume-other", {"n": number})

    stream = open_envelopes(quiet.port, "resume", ids[3])
    hello = opening(stream)
    assert seq(hello["last_id"]) == seq(ids[-1]) + 1  # the last "other" publish

    replayed = stream.messages(6)
    assert [e["id"] for e in replayed] == ids[4:]
    assert [e["message"]["n"] for e in replayed] == list(range(4, 10))
    assert {e["channel"] for e in replayed} == {"resume"}

    live = [publisher.publish("resume", {"n": number}) for number in range(10, 13)]
    assert [e["id"] for e in stream.messages(3)] == live
    no_more_frames(stream)


def test_resume_from_the_newest_id_sends_nothing_but_live(
    quiet: Daemon, publisher: Publisher
) -> None:
    newest = [publisher.publish("uptodate", n) for n in range(3)][-1]
    stream = open_envelopes(quiet.port, "uptodate", newest)
    opening(stream)
    live = publisher.publish("uptodate", 3)
    assert stream.next_envelope()["id"] == live


def test_resume_with_the_hello_last_id_reports_no_gap_on_a_new_channel(
    quiet: Daemon, publisher: Publisher
) -> None:
    publisher.publish("adopt-elsewhere", 1)
    stream = open_envelopes(quiet.port, "adopt-a")
    position = opening(stream)["last_id"]
    stream.close()

    # "adopt-b" is created after the position the client adopted.
    published = publisher.publish("adopt-b", 1)
    many = open_many(quiet.port, "adopt-a", "adopt-b", last_id=position)
    opening(many)
    assert many.next_envelope()["id"] == published


def test_resume_while_publishing_delivers_every_message_exactly_once() -> None:
    total, reconnects = 2000, 20
    with Daemon(history_size="5000") as daemon:
        stream = open_envelopes(daemon.port, "race")
        last_id = opening(stream)["last_id"]

        def publish_all() -> None:
            publisher = Publisher(daemon.port)
            for number in range(total):
                publisher.publish("race", number)
            publisher.close()

        thread = threading.Thread(target=publish_all, daemon=True)
        thread.start()

        received: list[int] = []
        rng = random.Random(6455)
        while_publishing = 0
        for _ in range(reconnects):
            for _ in range(rng.randrange(1, 60)):
                envelope = stream.next_envelope()
                assert envelope["type"] == "message", envelope
                received.append(envelope["message"])
                last_id = envelope["id"]
            stream.close()
            while_publishing += thread.is_alive()
            stream = open_envelopes(daemon.port, "race", last_id)
            opening(stream)

        while len(received) < total:
            envelope = stream.next_envelope()
            assert envelope["type"] == "message", envelope
            received.append(envelope["message"])
        thread.join(10 * UNIT)

        assert received == list(range(total))
        assert while_publishing >= reconnects // 2
        no_more_frames(stream)


# Gaps.


def test_gap_too_old_comes_first_then_what_is_still_held() -> None:
    with Daemon(history_size="3") as daemon:
        publisher = Publisher(daemon.port)
        ids = [publisher.publish("small", n) for n in range(6)]

        stream = open_envelopes(daemon.port, "small", ids[0])
        opening(stream)
        assert stream.next_envelope() == {
            "type": "gap",
            "channel": "small",
            "reason": "too_old",
        }
        assert [e["message"] for e in stream.messages(3)] == [3, 4, 5]

        live = publisher.publish("small", 6)
        assert stream.next_envelope()["id"] == live
        publisher.close()


def test_no_gap_when_the_last_id_is_the_newest_let_go() -> None:
    with Daemon(history_size="3") as daemon:
        publisher = Publisher(daemon.port)
        ids = [publisher.publish("edge", n) for n in range(5)]
        stream = open_envelopes(daemon.port, "edge", ids[1])
        opening(stream)
        assert [e["id"] for e in stream.messages(3)] == ids[2:]
        publisher.close()


def test_gap_other_epoch_after_a_restart() -> None:
    with Daemon() as before:
        old = Publisher(before.port).publish("restart", "old")
    with Daemon() as after:
        publisher = Publisher(after.port)
        held = [publisher.publish("restart", n) for n in range(2)]
        assert epoch(held[0]) != epoch(old)

        stream = open_envelopes(after.port, "restart", old)
        assert opening(stream)["epoch"] == epoch(held[0])
        assert stream.next_envelope() == {
            "type": "gap",
            "channel": "restart",
            "reason": "other_epoch",
        }
        assert [e["id"] for e in stream.messages(2)] == held
        publisher.close()


def test_gap_other_epoch_for_a_crafted_id(quiet: Daemon, publisher: Publisher) -> None:
    held = publisher.publish("crafted", 1)
    other = ("0" if held[0] != "0" else "1") + held[1:]

    stream = open_envelopes(quiet.port, "crafted", other)
    opening(stream)
    assert stream.next_envelope()["reason"] == "other_epoch"
    assert stream.next_envelope()["id"] == held


@pytest.mark.parametrize(
    "last_id",
    ["nonsense", "", "ABCDEF12-1", "future"],
    ids=["garbage", "empty", "uppercase", "future seq"],
)
def test_gap_unknown_for_a_malformed_or_future_last_id(
    quiet: Daemon, publisher: Publisher, last_id: str
) -> None:
    channel = f"unknown-{len(last_id)}"
    held = publisher.publish(channel, 1)
    if last_id == "future":
        last_id = f"{epoch(held)}-{seq(held) + 1000}"

    stream = open_envelopes(quiet.port, channel, last_id)
    opening(stream)
    assert stream.next_envelope() == {
        "type": "gap",
        "channel": channel,
        "reason": "unknown",
    }
    assert stream.next_envelope()["id"] == held
    live = publisher.publish(channel, "live")
    assert stream.next_envelope()["id"] == live


def test_gap_comes_before_any_message_of_its_channel_only() -> None:
    with Daemon(history_size="2") as daemon:
        publisher = Publisher(daemon.port)
        start = publisher.publish("keep", 0)
        lost = [publisher.publish("lose", n) for n in range(4)]
        kept = publisher.publish("keep", 1)

        stream = open_many(daemon.port, "keep", "lose", last_id=start)
        opening(stream)
        envelopes = [stream.next_envelope() for _ in range(4)]
        assert envelopes[0] == {"type": "gap", "channel": "lose", "reason": "too_old"}
        assert [e["id"] for e in envelopes[1:]] == [*lost[2:], kept]
        publisher.close()


# History bounds.


def test_history_ttl_expires_and_resume_then_says_too_old() -> None:
    with Daemon(history_ttl_secs="1") as daemon:
        publisher = Publisher(daemon.port)
        ids = [publisher.publish("ttl", n) for n in range(2)]
        assert daemon.stats()["history_bytes"] > 0

        wait_until(lambda: daemon.stats()["history_bytes"] == 0)
        stream = open_envelopes(daemon.port, "ttl", ids[0])
        opening(stream)
        assert stream.next_envelope()["reason"] == "too_old"
        live = publisher.publish("ttl", 2)
        assert stream.next_envelope()["id"] == live
        publisher.close()


def test_history_bytes_stay_within_the_bound() -> None:
    with Daemon(history_max_bytes="2000") as daemon:
        publisher = Publisher(daemon.port)
        ids = []
        for number in range(60):
            ids.append(publisher.publish(f"bytes{number % 3}", "x" * 100))
            if number % 10 == 9:
                held = daemon.stats()["history_bytes"]
                assert 0 < held <= 2000

        recent = open_envelopes(daemon.port, "bytes2", ids[-4])
        opening(recent)
        assert recent.next_envelope()["id"] == ids[-1]

        early = open_envelopes(daemon.port, "bytes0", ids[0])
        opening(early)
        assert early.next_envelope()["reason"] == "too_old"
        publisher.close()


def test_history_size_zero_keeps_nothing_but_knows_what_was_lost() -> None:
    with Daemon(history_size="0") as daemon:
        publisher = Publisher(daemon.port)
        ids = [publisher.publish("none", n) for n in range(2)]
        assert daemon.stats()["history_bytes"] == 0

        behind = open_envelopes(daemon.port, "none", ids[0])
        opening(behind)
        assert behind.next_envelope()["reason"] == "too_old"

        current = open_envelopes(daemon.port, "none", ids[1])
        opening(current)
        live = publisher.publish("none", 2)
        assert current.next_envelope()["id"] == live
        assert behind.next_envelope()["id"] == live
        publisher.close()
