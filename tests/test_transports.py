"""Many channels per stream, Server-Sent Events and WebSocket, against the
real daemon (docs/STREAMS.md, "Transports")."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websocket_connect

from helpers import UNIT, Daemon, make_token, read_head, wait_until
from subscribers import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameStream,
    Publisher,
    RawWebSocket,
    close_payload,
    open_events,
    open_many,
    open_websocket,
    query,
)

CLOSE_SHUTDOWN = b'{"type":"close","reason":"shutdown"}'
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FLOOD_PAD = "x" * 10000


@pytest.fixture(scope="module")
def shared() -> Iterator[Daemon]:
    """A daemon for tests that neither count nor stop it; 1 s heartbeat."""
    with Daemon(heartbeat_secs="1") as running:
        yield running


@pytest.fixture
def publisher(shared: Daemon) -> Iterator[Publisher]:
    publisher = Publisher(shared.port)
    yield publisher
    publisher.close()


def envelope(message_id: str, channel: str, message: bytes) -> bytes:
    return b'{"type":"message","id":"%s","channel":"%s","message":%s}' % (
        message_id.encode(),
        channel.encode(),
        message,
    )


def flood(daemon: Daemon, channel: str) -> int:
    """Publish large messages until a slow subscriber is disconnected."""
    publisher = Publisher(daemon.port)
    sent = 0
    while daemon.stats()["slow_subscriber_disconnects_total"] == 0:
        assert sent < 3000, "the slow subscriber was never disconnected"
        for _ in range(20):
            publisher.publish(channel, {"n": sent, "pad": FLOOD_PAD})
            sent += 1
    publisher.close()
    return sent


# Many channels on one length-prefixed stream.


def test_many_channels_interleave_in_publish_order(
    shared: Daemon, publisher: Publisher
) -> None:
    stream = open_many(shared.port, "m-a", "m-b")
    assert stream.status == 200
    assert json.loads(stream.next_frame())["type"] == "hello"

    published = [
        (publisher.publish(channel, n), channel)
        for n, channel in enumerate(["m-a", "m-b", "m-b", "m-a", "m-c", "m-b"])
        if channel != "m-c"
    ]
    received = stream.messages(5)
    assert [(e["id"], e["channel"]) for e in received] == published


def test_many_channels_refuse_everything_for_one_bad_token(daemon: Daemon) -> None:
    subscriptions = [
        {"channel": "good", "token": make_token("good")},
        {"channel": "bad", "token": make_token("other")},
    ]
    stream = FrameStream.post(
        daemon.port, "/api/stream", {"subscriptions": subscriptions}
    )
    assert stream.status == 401
    stats = daemon.stats()
    assert stats["active_stream_connections"] == 0
    assert stats["active_subscribers"] == 0
    assert stats["stream_connections_total"] == 0


def test_many_channels_refuse_more_than_the_limit() -> None:
    with Daemon(max_channels_per_stream="2") as daemon:
        assert open_many(daemon.port, "l1", "l2").status == 200
        assert open_many(daemon.port, "l1", "l2", "l3").status == 400


def test_many_channels_refuse_33_by_default(shared: Daemon) -> None:
    names = [f"lim{number}" for number in range(33)]
    assert open_many(shared.port, *names).status == 400
    assert open_many(shared.port, *names[:32]).status == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"subscriptions": "a"},
        {"subscriptions": {"channel": "a", "token": "t"}},
        {"subscriptions": ["a"]},
        {"subscriptions": [{"channel": "a"}]},
        {"subscriptions": [{"token": make_token("a")}]},
        {"subscriptions": [{"channel": 5, "token": make_token("a")}]},
        {"subscriptions": [{"channel": "a", "token": 5}]},
        {
            "subscriptions": [{"channel": "a", "token": make_token("a")}],
            "last_id": 7,
        },
    ],
    ids=[
        "missing",
        "string",
        "object",
        "list of strings",
        "no token",
        "no channel",
        "channel number",
        "token number",
        "last_id number",
    ],
)
def test_many_channels_refuse_malformed_subscriptions_with_422(
    shared: Daemon, body: dict[str, Any]
) -> None:
    assert FrameStream.post(shared.port, "/api/stream", body).status == 422


def test_many_channels_refuse_a_bad_channel_name_with_400(shared: Daemon) -> None:
    body = {"subscriptions": [{"channel": "a b", "token": make_token("a b")}]}
    assert FrameStream.post(shared.port, "/api/stream", body).status == 400


def test_many_channels_count_one_connection_and_each_subscription(
    daemon: Daemon,
) -> None:
    stream = open_many(daemon.port, "s-a", "s-b")
    assert stream.status == 200
    stats = daemon.stats()
    assert stats["active_stream_connections"] == 1
    assert stats["active_subscribers"] == 2
    assert stats["active_channels"] == 2

    stream.close()
    wait_until(lambda: daemon.stats()["active_subscribers"] == 0)
    assert daemon.stats()["active_stream_connections"] == 0


def test_many_channels_deliver_once_for_duplicate_subscriptions(
    daemon: Daemon,
) -> None:
    stream = open_many(daemon.port, "dup", "dup", "dup2", "dup")
    opening = json.loads(stream.next_frame())
    assert opening["type"] == "hello"
    assert daemon.stats()["active_subscribers"] == 2

    publisher = Publisher(daemon.port)
    first = publisher.publish("dup", 1)
    second = publisher.publish("dup", 2)
    assert [e["id"] for e in stream.messages(2)] == [first, second]
    with pytest.raises(TimeoutError):
        stream.next_message(timeout=0.2 * UNIT)
    publisher.close()


# Server-Sent Events.


def test_events_answer_with_an_uncached_event_stream(shared: Daemon) -> None:
    stream = open_events(shared.port, "e-head")
    assert stream.status == 200
    assert stream.head["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.head["cache-control"] == (
        "no-cache, no-store, must-revalidate, no-transform"
    )
    assert stream.head["x-accel-buffering"] == "no"
    assert stream.head["transfer-encoding"] == "chunked"


def test_events_open_with_retry_then_hello_carrying_its_id(
    shared: Daemon, publisher: Publisher
) -> None:
    newest = publisher.publish("e-other", 1)
    stream = open_events(shared.port, "e-hello")
    assert stream.next_block() == b"retry: 2000\n\n"

    hello = stream.next_event()
    assert hello.event == "hello"
    assert hello.id == newest
    assert hello.json() == {
        "type": "hello",
        "heartbeat_secs": 1,
        "epoch": newest.split("-")[0],
        "last_id": newest,
        "replay": 0,
    }


def test_events_carry_messages_as_unnamed_events_with_ids(
    shared: Daemon, publisher: Publisher
) -> None:
    stream = open_events(shared.port, "e-msg")
    assert stream.next_data().event == "hello"

    published = publisher.publish("e-msg", {"x": [1, "é"]})
    message = envelope(published, "e-msg", '{"x":[1,"é"]}'.encode())
    block = stream.next_block()
    while block == b":\n\n":
        block = stream.next_block()
    assert block == b"id: %s\ndata: %s\n\n" % (published.encode(), message)


def test_events_send_comment_heartbeats_at_the_interval(shared: Daemon) -> None:
    stream = open_events(shared.port, "e-beat")
    stream.next_data()  # hello, sent at once

    opened = time.monotonic()
    assert stream.next_block(timeout=3 * UNIT) == b":\n\n"
    first = time.monotonic()
    assert stream.next_block(timeout=3 * UNIT) == b":\n\n"
    second = time.monotonic()
    assert first - opened <= 1.5 * UNIT
    assert 0.8 <= second - first <= 1.5 * UNIT


def test_events_honour_last_event_id(shared: Daemon, publisher: Publisher) -> None:
    ids = [publisher.publish("e-resume", n) for n in range(3)]
    stream = open_events(shared.port, "e-resume", headers={"Last-Event-ID": ids[0]})
    assert stream.next_data().event == "hello"
    assert [stream.next_data().id for _ in range(2)] == ids[1:]


def test_events_last_id_parameter_wins_over_last_event_id(
    shared: Daemon, publisher: Publisher
) -> None:
    ids = [publisher.publish("e-wins", n) for n in range(3)]
    stream = open_events(
        shared.port, "e-wins", last_id=ids[1], headers={"Last-Event-ID": ids[0]}
    )
    assert stream.next_data().event == "hello"
    assert stream.next_data().id == ids[2]
    live = publisher.publish("e-wins", 3)
    assert stream.next_data().id == live


def test_events_send_a_gap_as_a_named_event_without_id(
    shared: Daemon, publisher: Publisher
) -> None:
    held = publisher.publish("e-gap", 1)
    stream = open_events(shared.port, "e-gap", last_id="nonsense")
    assert stream.next_data().event == "hello"
    gap = stream.next_data()
    assert gap.raw == (
        b'event: gap\ndata: {"type":"gap","channel":"e-gap","reason":"unknown"}'
    )
    assert stream.next_data().id == held


def test_events_hello_carries_no_id_while_a_replay_follows(
    shared: Daemon, publisher: Publisher
) -> None:
    # An EventSource adopts every id at once: had the hello carried the
    # new position, a connection cut before the replay arrived would
    # resume after messages the client never received.
    ids = [publisher.publish("e-replay", n) for n in range(3)]
    stream = open_events(shared.port, "e-replay", headers={"Last-Event-ID": ids[0]})
    hello = stream.next_data()
    assert (hello.event, hello.id, hello.json()["replay"]) == ("hello", None, 2)
    assert [stream.next_data().id for _ in range(2)] == ids[1:]

    again = open_events(shared.port, "e-replay", headers={"Last-Event-ID": ids[0]})
    assert again.next_data().json()["replay"] == 2


def test_events_give_the_position_with_the_last_gap_when_nothing_is_held(
    shared: Daemon,
) -> None:
    stream = open_events(shared.port, "e-gap-only-1", "e-gap-only-2", last_id="x")
    hello = stream.next_data()
    assert (hello.id, hello.json()["replay"]) == (None, 2)

    first, last = stream.next_data(), stream.next_data()
    assert (first.event, first.id) == ("gap", None)
    assert (last.event, last.id) == ("gap", hello.json()["last_id"])


def test_events_follow_many_channels(shared: Daemon, publisher: Publisher) -> None:
    stream = open_events(shared.port, "e-1", "e-2")
    stream.next_data()
    ids = [publisher.publish(name, 0) for name in ("e-2", "e-1", "e-2")]
    events = [stream.next_data() for _ in range(3)]
    assert [e.id for e in events] == ids
    assert [e.json()["channel"] for e in events] == ["e-2", "e-1", "e-2"]


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/api/events", 400),
        ("/api/events?channel=a", 400),
        ("/api/events?channel=a&channel=b&token=" + make_token("a"), 400),
        ("/api/events?token=" + make_token("a"), 400),
        ("/api/events?channel=a&token=" + make_token("b"), 401),
        ("/api/events?channel=a&token=nope", 401),
        ("/api/events?channel=a%20b&token=" + make_token("a b"), 400),
    ],
    ids=[
        "nothing",
        "no token",
        "fewer tokens",
        "no channel",
        "other channel's token",
        "garbage token",
        "bad channel",
    ],
)
def test_events_refuse_bad_subscriptions(
    shared: Daemon, target: str, status: int
) -> None:
    reply = shared.request("GET", target)
    assert reply.status == status
    assert "error" in reply.json()


def test_events_over_http10_are_close_delimited(
    shared: Daemon, publisher: Publisher
) -> None:
    stream = open_events(shared.port, "e-10", http10=True)
    assert stream.status == 200
    assert stream.head["connection"] == "close"
    assert "transfer-encoding" not in stream.head

    hello = stream.next_data()
    published = publisher.publish("e-10", 1)
    assert stream.next_data().id == published
    assert stream.body.startswith(b"retry: 2000\n\n" + hello.raw + b"\n\n")
    message = envelope(published, "e-10", b"1")
    assert stream.body.endswith(b"id: %s\ndata: %s\n\n" % (published.encode(), message))


def test_events_end_with_a_close_event_on_shutdown() -> None:
    with Daemon() as daemon:
        chunked = open_events(daemon.port, "e-bye")
        bare = open_events(daemon.port, "e-bye", http10=True)
        chunked.next_data()
        bare.next_data()

        assert daemon.stop() == 0
        goodbye = b"event: close\ndata: " + CLOSE_SHUTDOWN + b"\n\n"
        assert chunked.read_to_end().endswith(goodbye)
        assert chunked.dechunker.ended
        assert bare.read_to_end().endswith(goodbye)


# WebSocket.


def test_websocket_client_receives_hello_then_messages(
    shared: Daemon, publisher: Publisher
) -> None:
    uri = f"ws://127.0.0.1:{shared.port}/api/ws?" + query("w-lib")
    with websocket_connect(uri, proxy=None, compression=None) as websocket:
        hello = json.loads(websocket.recv(timeout=5 * UNIT))
        assert hello["type"] == "hello"
        assert hello["heartbeat_secs"] == 1

        published = publisher.publish("w-lib", {"x": 1})
        received = websocket.recv(timeout=5 * UNIT)
        assert received == envelope(published, "w-lib", b'{"x":1}').decode()


def test_websocket_resumes_after_the_last_id(
    shared: Daemon, publisher: Publisher
) -> None:
    ids = [publisher.publish("w-resume", n) for n in range(4)]
    websocket = open_websocket(shared.port, "w-resume", last_id=ids[1])
    assert websocket.next_envelope()["last_id"] == ids[-1]
    assert [websocket.next_envelope()["id"] for _ in range(2)] == ids[2:]
    live = publisher.publish("w-resume", 4)
    assert websocket.next_envelope()["id"] == live


def test_websocket_handshake_switches_protocols(shared: Daemon) -> None:
    websocket = open_websocket(shared.port, "w-hs")
    assert websocket.status == 101
    assert websocket.head["upgrade"].lower() == "websocket"
    assert websocket.head["connection"].lower() == "upgrade"
    assert "sec-websocket-extensions" not in websocket.head
    assert websocket.next_envelope()["type"] == "hello"


def test_websocket_handshake_accept_value_follows_rfc_6455(shared: Daemon) -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    request = (
        "GET /api/ws?" + query("w-rfc") + " HTTP/1.1\r\nHost: localhost\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    expected = base64.b64encode(
        hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()
    ).decode()
    with socket.create_connection(("127.0.0.1", shared.port), 5 * UNIT) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    assert head.startswith(b"HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {expected}\r\n".encode() in head
    assert expected == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_sends_pings_at_the_heartbeat_interval(shared: Daemon) -> None:
    websocket = open_websocket(shared.port, "w-ping")
    opcode, _ = websocket.next_frame()
    assert opcode == TEXT
    opened = time.monotonic()

    assert websocket.next_frame(timeout=3 * UNIT) == (PING, b"")
    first = time.monotonic()
    assert websocket.next_frame(timeout=3 * UNIT) == (PING, b"")
    second = time.monotonic()
    assert first - opened <= 1.5 * UNIT
    assert 0.8 <= second - first <= 1.5 * UNIT


def test_websocket_answers_a_client_ping_and_ignores_messages(
    shared: Daemon, publisher: Publisher
) -> None:
    websocket = open_websocket(shared.port, "w-pong")
    assert websocket.next_envelope()["type"] == "hello"

    websocket.send(TEXT, b"ignored")
    websocket.send(PING, b"are you there")
    frame = websocket.next_frame()
    while frame == (PING, b""):
        frame = websocket.next_frame()
    assert frame == (PONG, b"are you there")

    published = publisher.publish("w-pong", 1)
    assert websocket.next_envelope()["id"] == published


def test_websocket_client_close_ends_the_stream(daemon: Daemon) -> None:
    websocket = open_websocket(daemon.port, "w-close")
    assert websocket.next_envelope()["type"] == "hello"
    assert daemon.stats()["active_subscribers"] == 1

    websocket.send(CLOSE, close_payload(1000, "bye"))
    code, _ = websocket.close_code()
    assert code == 1000
    wait_until(lambda: daemon.stats()["active_stream_connections"] == 0)
    assert daemon.stats()["active_subscribers"] == 0
    websocket.sock.settimeout(5 * UNIT)
    assert websocket.sock.recv(1) == b""


def test_websocket_library_close_ends_the_stream(daemon: Daemon) -> None:
    uri = f"ws://127.0.0.1:{daemon.port}/api/ws?" + query("w-lib-close")
    with websocket_connect(uri, proxy=None, compression=None) as websocket:
        websocket.recv(timeout=5 * UNIT)
        assert daemon.stats()["active_stream_connections"] == 1
    wait_until(lambda: daemon.stats()["active_stream_connections"] == 0)
    assert daemon.stats()["active_subscribers"] == 0


def test_websocket_refused_token_closes_with_4001(daemon: Daemon) -> None:
    target = "/api/ws?channel=w-bad&token=" + make_token("w-other")
    websocket = RawWebSocket.open(daemon.port, target)
    assert websocket.status == 101
    code, reason = websocket.close_code()
    assert code == 4001
    assert reason
    assert daemon.stats()["refused_subscriptions_total"] == 1
    assert daemon.stats()["active_stream_connections"] == 0


def test_websocket_library_sees_the_refusal_code(shared: Daemon) -> None:
    uri = f"ws://127.0.0.1:{shared.port}/api/ws?channel=w-x&token=nope"
    with (
        websocket_connect(uri, proxy=None, compression=None) as websocket,
        pytest.raises(ConnectionClosed) as closed,
    ):
        websocket.recv(timeout=5 * UNIT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001


@pytest.mark.parametrize(
    "target",
    [
        "/api/ws?channel=a%20b&token=" + make_token("a b"),
        "/api/ws?channel=a&channel=b&token=" + make_token("a"),
        "/api/ws",
        "/api/ws?" + query(*[f"c{n}" for n in range(33)]),
    ],
    ids=["bad channel", "fewer tokens", "nothing", "too many channels"],
)
def test_websocket_malformed_request_closes_with_4400(
    shared: Daemon, target: str
) -> None:
    websocket = RawWebSocket.open(shared.port, target)
    assert websocket.status == 101
    assert websocket.close_code()[0] == 4400


@pytest.mark.parametrize(
    ("token", "status"),
    [(make_token("w-plain"), None), ("nope", 401)],
    ids=["valid token", "bad token"],
)
def test_websocket_endpoint_without_upgrade_answers_json_4xx(
    shared: Daemon, token: str, status: int | None
) -> None:
    reply = shared.request("GET", "/api/ws?channel=w-plain&token=" + token)
    assert 400 <= reply.status < 500
    if status is not None:
        assert reply.status == status
    assert reply.headers["Content-Type"] == "application/json"
    assert "error" in reply.json()


def test_websocket_endpoint_names_what_to_upgrade_to(shared: Daemon) -> None:
    target = "/api/ws?" + query("w-426")
    plain = shared.request("GET", target)
    assert (plain.status, plain.headers["Upgrade"]) == (426, "websocket")

    old = shared.request(
        "GET",
        target,
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "8",
        },
    )
    assert old.status == 426
    assert old.headers["Sec-WebSocket-Version"] == "13"
    assert old.json() == {"error": "bad websocket handshake"}


def test_websocket_says_goodbye_with_1001_on_shutdown() -> None:
    with Daemon() as daemon:
        websocket = open_websocket(daemon.port, "w-bye")
        assert websocket.next_envelope()["type"] == "hello"

        assert daemon.stop() == 0
        assert websocket.next_envelope() == {"type": "close", "reason": "shutdown"}
        assert websocket.next_frame() == (CLOSE, close_payload(1001, "shutdown"))


# Slow subscribers of every transport.
#
# The goodbye waits behind what is already buffered, and the daemon cuts
# the connection off a moment later, so each test reads at once.


def assert_slow_subscriber_gone(daemon: Daemon) -> None:
    daemon.wait_for_log("disconnected slow subscriber")
    assert daemon.stats()["slow_subscriber_disconnects_total"] == 1
    wait_until(lambda: daemon.stats()["active_stream_connections"] == 0)
    assert daemon.stats()["active_subscribers"] == 0


def test_slow_websocket_client_is_disconnected_with_4008() -> None:
    with Daemon(max_pending_bytes="65536") as daemon:
        slow = open_websocket(daemon.port, "w-flood", rcvbuf=4096)
        assert slow.status == 101
        wait_until(lambda: daemon.stats()["active_subscribers"] == 1)

        flood(daemon, "w-flood")
        code, _ = slow.close_code(timeout=5 * UNIT)
        assert code == 4008
        assert_slow_subscriber_gone(daemon)


def test_slow_event_stream_is_disconnected_with_a_close_event() -> None:
    with Daemon(max_pending_bytes="65536") as daemon:
        slow = open_events(daemon.port, "e-flood", rcvbuf=4096)
        assert slow.status == 200
        wait_until(lambda: daemon.stats()["active_subscribers"] == 1)

        flood(daemon, "e-flood")
        body = slow.read_to_end(timeout=5 * UNIT)
        assert slow.dechunker.ended
        last = body.rsplit(b"\n\n", 2)[-2]
        assert last.startswith(b'event: close\ndata: {"type":"close","reason":')
        assert_slow_subscriber_gone(daemon)


def test_slow_envelope_stream_is_disconnected_with_a_close_envelope() -> None:
    with Daemon(max_pending_bytes="65536") as daemon:
        slow = open_many(daemon.port, "f-flood", "f-quiet", rcvbuf=4096)
        assert slow.status == 200
        wait_until(lambda: daemon.stats()["active_subscribers"] == 2)

        flood(daemon, "f-flood")
        slow.read_to_end(timeout=5 * UNIT)
        assert slow.raw.endswith(b"\r\n0\r\n\r\n")
        frames = []
        with contextlib.suppress(TimeoutError):
            while True:
                frames.append(slow.next_frame(timeout=0))
        assert json.loads(frames[-1])["type"] == "close"
        assert all(json.loads(f)["type"] == "message" for f in frames[1:-1] if f)
        assert_slow_subscriber_gone(daemon)


def test_websocket_upgrade_over_http10_is_refused(shared: Daemon) -> None:
    token = make_token("ws-old")
    with socket.create_connection(("127.0.0.1", shared.port)) as sock:
        sock.sendall(
            f"GET /api/ws?channel=ws-old&token={token} HTTP/1.0\r\n"
            "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status, _, _ = read_head(sock)
    assert status == 400


def test_null_envelope_means_the_original_stream(shared: Daemon) -> None:
    body = json.dumps({"token": make_token("flags"), "envelope": None}).encode()
    with socket.create_connection(("127.0.0.1", shared.port)) as sock:
        sock.sendall(
            b"POST /api/stream/flags HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        status, _, rest = read_head(sock)
    assert status == 200
    assert rest.startswith(b"2\r\n\x00\x00\r\n")  # the original heartbeat


def test_null_return_id_means_no_id(shared: Daemon) -> None:
    body = {"channel": "flags", "message": 1, "return_id": None}
    assert shared.request("POST", "/api/publish", body, auth=True).status == 204
