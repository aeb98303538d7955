"""The shipped proxy configurations, each served by the real proxy.

What every file in deploy/ must do for browsers, proved the same way for
nginx, HAProxy and Apache (tests/proxies.py runs them): each transport of
docs/STREAMS.md arrives live and uncompressed, heartbeats keep a stream
open past the proxy's timeouts, and nothing but the public endpoints is
reachable, whatever the spelling of the path and whatever credentials the
request carries. test_nginx.py adds what is particular to nginx.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.frames import Opcode

from helpers import UNIT, Daemon, Reply, make_token
from proxies import PROXIES, Proxy, running_proxy

# The daemon's default heartbeat interval (README, "Configuration").
DEFAULT_HEARTBEAT_SECS = 15


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon behind every proxy of this module, with 1 s heartbeats."""
    with Daemon(heartbeat_secs="1") as running:
        yield running


@pytest.fixture(scope="module", params=PROXIES, ids=lambda kind: kind.name)
def proxy(
    request: pytest.FixtureRequest,
    daemon: Daemon,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Proxy]:
    kind: type[Proxy] = request.param
    directory = tmp_path_factory.mktemp(kind.name)
    with running_proxy(kind, daemon, directory) as running:
        yield running


def within(start: float, seconds: float) -> float:
    """The time left until ``seconds`` after ``start``, for a deadline."""
    return max(0.0, start + seconds - time.monotonic())


def is_daemon_answer(reply: Reply) -> bool:
    # The daemon answers every error in JSON; the proxies in HTML or text.
    return "json" in reply.headers.get("Content-Type", "")


# The configuration.


def test_proxy_accepts_the_configuration(proxy: Proxy) -> None:
    result = subprocess.run(
        proxy.check_command(), capture_output=True, text=True, timeout=10 * UNIT
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert proxy.check_passed in output, output
    assert "warn" not in output.lower(), output


@pytest.mark.parametrize("kind", PROXIES, ids=lambda kind: kind.name)
def test_stream_timeouts_exceed_the_heartbeat_interval(kind: type[Proxy]) -> None:
    timeouts = kind.stream_timeouts()
    assert timeouts, "no stream timeout found"
    # With room to spare, as each file asks: 75 s as shipped.
    assert min(timeouts) >= 4 * DEFAULT_HEARTBEAT_SECS, timeouts
    assert "RPUSHD_HEARTBEAT_SECS" in kind.text()


# The public endpoints, live.


def test_frames_arrive_live_through_the_proxy(daemon: Daemon, proxy: Proxy) -> None:
    channel = f"{proxy.name}-frames"
    connecting = time.monotonic()
    stream = proxy.open_stream(channel)
    try:
        assert stream.status == 200, stream.head
        assert stream.head["content-type"] == "application/octet-stream"
        assert "content-encoding" not in stream.head
        first = stream.next_frame(within(connecting, UNIT))
        assert first == b"", "the first frame must be a heartbeat"

        publishing = time.monotonic()
        assert daemon.publish(channel, {"n": 1}).status == 204
        assert stream.next_message(within(publishing, UNIT)) == {"n": 1}
    finally:
        stream.close()


def test_frames_pass_the_proxy_without_being_held_back(
    daemon: Daemon, proxy: Proxy
) -> None:
    # A proxy that coalesces small writes delays every message by a fixed
    # time (HAProxy without http-no-delay: about 200 ms); on loopback a
    # message takes a few milliseconds. The median of a few is robust to
    # one slow turn of a busy machine.
    channel = f"{proxy.name}-prompt"
    stream = proxy.open_stream(channel)
    try:
        assert stream.next_frame(UNIT) == b""
        delays = []
        for number in range(5):
            publishing = time.monotonic()
            assert daemon.publish(channel, {"n": number}).status == 204
            assert stream.next_message(within(publishing, UNIT)) == {"n": number}
            delays.append(time.monotonic() - publishing)
        assert statistics.median(delays) < 0.1 * UNIT, delays
    finally:
        stream.close()


def test_many_channel_stream_is_live_through_the_proxy(
    daemon: Daemon, proxy: Proxy
) -> None:
    first_channel, second_channel = f"{proxy.name}-a", f"{proxy.name}-b"
    connecting = time.monotonic()
    stream = proxy.open_many([first_channel, second_channel])
    try:
        assert stream.status == 200, stream.head
        assert "content-encoding" not in stream.head
        hello = stream.next_message(within(connecting, UNIT))
        assert hello["type"] == "hello"

        publishing = time.monotonic()
        assert daemon.publish(second_channel, {"n": 2}).status == 204
        message = stream.next_message(within(publishing, UNIT))
        assert (message["channel"], message["message"]) == (second_channel, {"n": 2})
    finally:
        stream.close()


def test_server_sent_events_are_live_through_the_proxy(
    daemon: Daemon, proxy: Proxy
) -> None:
    channel = f"{proxy.name}-events"
    connecting = time.monotonic()
    events = proxy.open_events([channel])
    try:
        assert events.status == 200, events.head
        assert events.head["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in events.head
        assert events.next_event(within(connecting, UNIT)) == {"retry": "2000"}
        hello = events.next_event(within(connecting, UNIT))
        assert hello["event"] == "hello"

        publishing = time.monotonic()
        assert daemon.publish(channel, {"n": 3}).status == 204
        message = events.next_envelope(within(publishing, UNIT))
        assert (message["channel"], message["message"]) == (channel, {"n": 3})
    finally:
        events.close()


def test_websocket_is_live_through_the_proxy(daemon: Daemon, proxy: Proxy) -> None:
    channel = f"{proxy.name}-ws"
    connecting = time.monotonic()
    websocket = proxy.open_websocket([channel])
    try:
        assert websocket.status == 101
        hello = websocket.next_envelope(within(connecting, UNIT))
        assert hello["type"] == "hello"

        publishing = time.monotonic()
        assert daemon.publish(channel, {"n": 4}).status == 204
        message = websocket.next_envelope(within(publishing, UNIT))
        assert (message["channel"], message["message"]) == (channel, {"n": 4})
    finally:
        websocket.close()


def test_refused_websocket_token_closes_with_4001_through_the_proxy(
    proxy: Proxy,
) -> None:
    websocket = proxy.open_websocket(["ws-refused"], token=make_token("other"))
    try:
        assert websocket.status == 101
        frame = websocket.next_frame(UNIT)
        assert frame.opcode is Opcode.CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 4001
    finally:
        websocket.close()


def test_subscription_refusal_passes_through_the_proxy(proxy: Proxy) -> None:
    stream = proxy.open_stream("room-1", make_token("other-room"))
    try:
        assert stream.status == 401
    finally:
        stream.close()


def test_healthz_answers_through_the_proxy(proxy: Proxy) -> None:
    reply = proxy.request("GET", "/healthz", headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}


# Streams that last.


@pytest.mark.parametrize("kind", PROXIES, ids=lambda kind: kind.name)
def test_heartbeats_keep_streams_open_past_the_proxy_timeouts(
    daemon: Daemon, kind: type[Proxy], tmp_path: Path
) -> None:
    # Every timeout the shipped file sets for streams, and the site's own
    # client-side one, cut to 2 s: 1 s heartbeats must pass through, one by
    # one, and keep every transport open. (With 6 s heartbeats, each proxy
    # closes all four within 2.5 s, so this test has teeth.)
    with running_proxy(kind, daemon, tmp_path, timeout_secs=2) as proxy:
        channel = f"{proxy.name}-long"
        frames = proxy.open_stream(channel)
        many = proxy.open_many([channel])
        events = proxy.open_events([channel])
        websocket = proxy.open_websocket([channel])
        try:
            assert frames.next_frame(UNIT) == b""
            assert many.next_message(UNIT)["type"] == "hello"
            assert events.next_event(UNIT) == {"retry": "2000"}
            assert events.next_event(UNIT)["event"] == "hello"
            assert websocket.next_envelope(UNIT)["type"] == "hello"

            for _ in range(3):
                assert frames.next_frame(2 * UNIT) == b""
                assert many.next_frame(2 * UNIT) == b""
                assert events.next_event(2 * UNIT) == {":": ""}
                assert websocket.next_frame(2 * UNIT).opcode is Opcode.PING

            assert daemon.publish(channel, {"late": True}).status == 204
            assert frames.next_message(UNIT) == {"late": True}
            assert many.next_message(UNIT)["message"] == {"late": True}
            assert events.next_envelope(UNIT)["message"] == {"late": True}
            assert websocket.next_envelope(UNIT)["message"] == {"late": True}
        finally:
            for client in (frames, many, events, websocket):
                client.close()


@pytest.mark.parametrize("kind", PROXIES, ids=lambda kind: kind.name)
def test_slow_subscriber_behind_the_proxy_is_still_disconnected(
    kind: type[Proxy], tmp_path: Path
) -> None:
    # The proxy must not absorb what its client cannot take (nginx's
    # proxy_buffering would spool it to disk): the daemon bounds unsent
    # data per stream and can only do so if the backlog reaches it.
    with (
        Daemon(heartbeat_secs="1", max_pending_bytes="65536") as daemon,
        running_proxy(kind, daemon, tmp_path) as proxy,
    ):
        slow = proxy.open_stream("flood")
        try:
            assert slow.status == 200, slow.head
            message = "x" * 16000
            sent = 0
            while daemon.stats()["slow_subscriber_disconnects_total"] == 0:
                assert sent < 5000, "the slow subscriber was never disconnected"
                for _ in range(20):
                    assert daemon.publish("flood", {"pad": message}).status == 204
                    sent += 1
            assert daemon.stats()["active_subscribers"] == 0
        finally:
            slow.close()


# Everything else stays internal.

PRIVILEGED = [
    ("POST", "/api/publish"),
    ("GET", "/api/stats?mode=json"),
    ("GET", "/metrics"),
    ("POST", "//api/publish"),
    ("POST", "/./api/publish"),
    ("POST", "/api/stream/../publish"),
    ("POST", "/api/stream/room-1/../../api/publish"),
    ("POST", "/api/stream/%2e%2e/publish"),
    ("POST", "/api/stream/..%2fpublish"),
    ("POST", "/api/stream/%2e%2e%2fpublish"),
    ("POST", "/healthz/../api/publish"),
    ("POST", "/api/%70ublish"),
    ("POST", "/API/PUBLISH"),
    ("GET", "/api/events/../stats"),
]


@pytest.mark.parametrize(("method", "path"), PRIVILEGED)
def test_privileged_endpoints_are_unreachable_through_the_proxy(
    daemon: Daemon, proxy: Proxy, method: str, path: str
) -> None:
    before = daemon.stats()
    body = {"channel": "room-1", "message": 1} if method == "POST" else None
    reply = proxy.request(method, path, body, auth=True)
    assert reply.status in (403, 404), reply
    assert not is_daemon_answer(reply), reply
    after = daemon.stats()
    assert after["publish_requests_total"] == before["publish_requests_total"]
    assert after["auth_failures_total"] == before["auth_failures_total"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/"),
        ("POST", "/api/stream/"),
        ("GET", "/healthz/more"),
        ("POST", "/api/publish.php"),
        ("GET", "/api/events/"),
        ("GET", "/api/ws/"),
        ("GET", "/api/eventsx"),
        ("GET", "/api/metrics"),
    ],
)
def test_other_paths_under_the_prefix_are_refused(
    proxy: Proxy, method: str, path: str
) -> None:
    body = {"token": make_token("room-1")} if method == "POST" else None
    reply = proxy.request(method, path, body)
    # nginx leaves "/api/stream/" to the daemon, which answers 404 too.
    assert reply.status in (403, 404), reply


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/stream/room-1"),
        ("GET", "/api/stream"),
        ("PUT", "/api/stream/room-1"),
        ("POST", "/healthz"),
        ("POST", "/api/events?channel=room-1"),
        ("POST", "/api/ws?channel=room-1"),
        ("DELETE", "/api/events"),
    ],
)
def test_public_paths_with_another_method_are_refused_by_the_proxy(
    daemon: Daemon, proxy: Proxy, method: str, path: str
) -> None:
    before = daemon.stats()["stream_connections_total"]
    reply = proxy.request(method, path, {"token": make_token("room-1")})
    assert reply.status == 403, reply
    assert not is_daemon_answer(reply), reply
    assert daemon.stats()["stream_connections_total"] == before
