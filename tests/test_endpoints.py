"""Every endpoint of PROTOCOL.md, driven over loopback against the real daemon."""

from __future__ import annotations

import json
import socket
import time

import pytest

from helpers import PUBLISH_SECRET, UNIT, Daemon, Stream, make_token

NO_CACHE = {
    "cache-control": "no-cache, no-store, must-revalidate, no-transform",
    "pragma": "no-cache",
    "expires": "0",
}


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# Health and routing.


def test_healthz_answers_ok_json(daemon: Daemon) -> None:
    reply = daemon.request("GET", "/healthz")
    assert reply.status == 200
    assert reply.body == b'{"status":"ok"}'
    assert lower(reply.headers)["content-type"] == "application/json"


def test_healthz_answers_head_without_body(daemon: Daemon) -> None:
    reply = daemon.request("HEAD", "/healthz")
    assert reply.status == 200
    assert reply.body == b""


@pytest.mark.parametrize(
    "path", ["/", "/nope", "/api/stream/", "/api/stream/a/b", "/healthz/", "/api"]
)
def test_unknown_paths_answer_404_with_json_error(daemon: Daemon, path: str) -> None:
    reply = daemon.request("POST", path, {"token": "x"})
    assert reply.status == 404
    assert "error" in reply.json()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/healthz", "GET, HEAD"),
        ("GET", "/api/publish", "POST"),
        ("DELETE", "/api/stats", "GET, HEAD"),
        ("GET", "/api/stream/room", "POST"),
    ],
)
def test_known_path_with_other_method_answers_405(
    daemon: Daemon, method: str, path: str, allowed: str
) -> None:
    reply = daemon.request(method, path)
    assert reply.status == 405
    assert lower(reply.headers)["allow"] == allowed


# Publish.


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "bearer " + PUBLISH_SECRET,
        "Bearer  " + PUBLISH_SECRET,
        "Bearer " + PUBLISH_SECRET + "x",
        "Basic " + PUBLISH_SECRET,
        PUBLISH_SECRET,
    ],
)
def test_publish_without_the_exact_bearer_secret_answers_401_and_counts(
    daemon: Daemon, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = daemon.request(
        "POST", "/api/publish", {"channel": "c", "message": 1}, headers
    )
    assert reply.status == 401
    stats = daemon.stats()
    assert stats["auth_failures_total"] == 1
    assert stats["publish_requests_total"] == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{not json", "application/json"), (b"", "text/plain"), (b"x" * 20000, "")],
)
def test_publish_checks_the_secret_before_the_body(
    daemon: Daemon, body: bytes, content_type: str
) -> None:
    reply = daemon.request("POST", "/api/publish", body, {"Content-Type": content_type})
    assert reply.status == 401


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"channel":"c","message":1}', "text/plain", 415),
        (b'{"channel":"c","message":1}', "", 415),
        (b'{"channel":"c",', "application/json", 400),
        (b'{"channel":"c","message":NaN}', "application/json", 400),
        (b'{"channel":"c","message":"\\ud800"}', "application/json", 400),
        (b'{"channel":"c","message":"\xff"}', "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        (
            b'{"channel":"c","message":' + b"[" * 300 + b"]" * 300 + b"}",
            "application/json",
            400,
        ),
        (b'{"channel":"c"}', "application/json", 422),
        (b'{"message":1}', "application/json", 422),
        (b"[1,2]", "application/json", 422),
        (b'{"channel":5,"message":1}', "application/json", 422),
        (b'{"channel":"c","channel":"d","message":1}', "application/json", 422),
        (b'{"channel":"bad name","message":1}', "application/json", 400),
        (b'{"channel":"","message":1}', "application/json", 400),
        (b'{"channel":"' + b"a" * 192 + b'","message":1}', "application/json", 400),
        (b'{"channel":"\xd0\xb0","message":1}', "application/json", 400),
        (b'{"channel":"c","message":"' + b"x" * 17000 + b'"}', "application/json", 413),
    ],
)
def test_publish_refuses_bad_bodies_with_the_contract_status(
    daemon: Daemon, body: bytes, content_type: str, status: int
) -> None:
    headers = {"Authorization": f"Bearer {PUBLISH_SECRET}"}
    if content_type:
        headers["Content-Type"] = content_type
    reply = daemon.request("POST", "/api/publish", body, headers)
    assert reply.status == status
    assert "error" in reply.json()
    assert daemon.stats()["publish_requests_total"] == 0


def test_publish_accepts_json_content_type_with_parameters(daemon: Daemon) -> None:
    reply = daemon.request(
        "POST",
        "/api/publish",
        b'{"channel":"c","message":1}',
        {"Content-Type": "application/json; charset=utf-8"},
        auth=True,
    )
    assert reply.status == 204


def test_publish_without_subscribers_succeeds_and_retains_the_channel(
    daemon: Daemon,
) -> None:
    reply = daemon.publish("lonely", {"x": 1})
    assert reply.status == 204
    assert reply.body == b""

    stats = daemon.stats()
    assert stats["retained_channels"] == 1
    assert stats["active_channels"] == 0
    assert stats["publish_requests_total"] == 1
    assert stats["published_bytes_total"] == len(b'{"x":1}')
    assert stats["channels"][0]["name"] == "lonely"


def test_payload_is_compact_json_with_utf8_kept(daemon: Daemon) -> None:
    stream = daemon.subscribe("room")
    body = '{"channel": "room", "message": { "text" : "héllo \\u00e9 ☃", "n": [1, 2] }}'
    reply = daemon.request(
        "POST",
        "/api/publish",
        body.encode(),
        {"Content-Type": "application/json"},
        auth=True,
    )
    assert reply.status == 204
    assert stream.next_frame() == '{"text":"héllo é ☃","n":[1,2]}'.encode()


def test_extra_fields_in_publish_body_are_ignored(daemon: Daemon) -> None:
    stream = daemon.subscribe("room")
    reply = daemon.request(
        "POST",
        "/api/publish",
        {"channel": "room", "message": 7, "extra": True},
        auth=True,
    )
    assert reply.status == 204
    assert stream.next_message() == 7


def test_every_subscriber_receives_every_message_in_publish_order(
    daemon: Daemon,
) -> None:
    streams = [daemon.subscribe("fan") for _ in range(5)]
    other = daemon.subscribe("other")
    for number in range(50):
        assert daemon.publish("fan", {"n": number}).status == 204

    for stream in streams:
        assert [stream.next_message()["n"] for _ in range(50)] == list(range(50))
    daemon.publish("other", "mine")
    assert other.next_message() == "mine"


def test_publishers_can_reuse_one_keep_alive_connection(daemon: Daemon) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5 * UNIT)
    headers = {
        "Authorization": f"Bearer {PUBLISH_SECRET}",
        "Content-Type": "application/json",
    }
    for number in range(20):
        body = json.dumps({"channel": "ka", "message": number})
        connection.request("POST", "/api/publish", body, headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 204
    connection.close()
    assert daemon.stats()["publish_requests_total"] == 20


def raw_publish(body: bytes, *, after_values: bytes = b"") -> bytes:
    """A publish request as bytes; ``after_values`` ends two header values."""
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer %s%s\r\n"
        b"Content-Type: application/json%s\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    ) % (PUBLISH_SECRET.encode(), after_values, after_values, len(body), body)


def test_whitespace_after_a_header_value_is_not_part_of_it(daemon: Daemon) -> None:
    request = raw_publish(b'{"channel":"ows","message":1}', after_values=b" \t ")
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 204 No Content\r\n")


def test_pipelined_publishes_are_answered_in_order(daemon: Daemon) -> None:
    stream = daemon.subscribe("pipe")
    requests = b"".join(
        raw_publish(json.dumps({"channel": "pipe", "message": number}).encode())
        for number in range(10)
    )
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(requests)
        received = b""
        while received.count(b"204 No Content") < 10:
            data = sock.recv(65536)
            assert data, received
            received += data
    assert [stream.next_message() for _ in range(10)] == list(range(10))


# Streams.


def test_stream_answers_with_the_contract_headers(daemon: Daemon) -> None:
    stream = daemon.subscribe("room")
    assert stream.head["content-type"] == "application/octet-stream"
    assert stream.head["x-content-type-options"] == "nosniff"
    assert stream.head["x-accel-buffering"] == "no"
    assert stream.head["transfer-encoding"] == "chunked"
    for name, value in NO_CACHE.items():
        assert stream.head[name] == value


def test_stream_starts_with_one_heartbeat_then_one_per_interval(
    daemon: Daemon,
) -> None:
    stream = daemon.subscribe("beat")  # waits for the opening heartbeat
    opened = time.monotonic()
    assert stream.next_frame(timeout=3 * UNIT) == b""
    second = time.monotonic()
    assert stream.next_frame(timeout=3 * UNIT) == b""
    third = time.monotonic()

    # RPUSHD_HEARTBEAT_SECS=1: never two back to back, never late.
    assert 0.8 <= second - opened <= 1.5 * UNIT
    assert 0.8 <= third - second <= 1.5 * UNIT


def test_stream_frames_are_length_prefixed_chunks(daemon: Daemon) -> None:
    stream = daemon.subscribe("bytes")
    daemon.publish("bytes", "hi")
    assert stream.next_frame() == b'"hi"'
    assert b'6\r\n\x00\x04"hi"\r\n' in stream.raw


def test_http10_stream_is_close_delimited_without_chunks(daemon: Daemon) -> None:
    stream = Stream.open(daemon.port, "old", make_token("old"), http10=True)
    assert stream.status == 200
    assert "transfer-encoding" not in stream.head
    assert stream.next_frame() == b""
    daemon.publish("old", 1)
    assert stream.next_frame() == b"1"
    assert stream.raw == b"\x00\x00\x00\x011"


def test_percent_encoded_channel_in_path_is_decoded(daemon: Daemon) -> None:
    stream = Stream.open(daemon.port, "room%3A1", make_token("room:1"))
    assert stream.status == 200
    daemon.publish("room:1", "ok")
    assert stream.next_message() == "ok"


@pytest.mark.parametrize(
    ("channel", "token", "status"),
    [
        ("room", make_token("other"), 401),
        ("room", make_token("room", ttl=-5), 401),
        ("room", make_token("room", secret="wrong"), 401),
        ("room", "not-a-token", 401),
        ("bad%20name", make_token("bad name"), 400),
        ("%D0%B0", make_token("\u0430"), 400),
        ("%FF", "x", 400),
        ("a" * 192, make_token("a" * 192), 400),
    ],
)
def test_stream_refuses_bad_channels_and_tokens(
    daemon: Daemon, channel: str, token: str, status: int
) -> None:
    stream = Stream.open(daemon.port, channel, token)
    assert stream.status == status
    assert daemon.stats()["active_stream_connections"] == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"token":"x"}', "text/plain", 415),
        (b"{", "application/json", 400),
        (b"{}", "application/json", 422),
        (b'{"token":5}', "application/json", 422),
        (b'"token"', "application/json", 422),
    ],
)
def test_stream_refuses_bad_bodies(
    daemon: Daemon, body: bytes, content_type: str, status: int
) -> None:
    reply = daemon.request(
        "POST", "/api/stream/room", body, {"Content-Type": content_type}
    )
    assert reply.status == status


def test_refused_subscriptions_are_counted(daemon: Daemon) -> None:
    Stream.open(daemon.port, "room", make_token("other")).close()
    assert daemon.stats()["refused_subscriptions_total"] == 1


# Stats.


def test_stats_text_lists_figures_in_contract_order(daemon: Daemon) -> None:
    reply = daemon.request("GET", "/api/stats", auth=True)
    assert reply.status == 200
    assert lower(reply.headers)["content-type"] == "text/plain; charset=utf-8"
    for name, value in NO_CACHE.items():
        assert lower(reply.headers)[name] == value

    lines = reply.body.decode().splitlines()
    keys = [line.split(":", 1)[0] for line in lines[1:]]
    assert lines[0] == "rpushd stats"
    assert keys[:13] == [
        "version", "repository", "started_at", "uptime_seconds",
        "active_channels", "retained_channels", "active_stream_connections",
        "active_subscribers", "stream_connections_total",
        "publish_requests_total", "published_bytes_total", "auth_failures_total",
        "memory_rss_bytes",
    ]  # fmt: skip
    assert "slow_subscriber_disconnects_total" in keys
    assert lines[-1] == "channels: hidden (use ?verbose=1 to include channel details)"


def test_stats_verbose_lists_channels_by_subscribers_then_name(daemon: Daemon) -> None:
    held = [daemon.subscribe(name) for name in ("b", "b", "c")]
    daemon.publish("a", 1)
    stats = daemon.stats()
    assert [(c["name"], c["subscribers"]) for c in stats["channels"]] == [
        ("b", 2),
        ("c", 1),
        ("a", 0),
    ]
    assert stats["active_channels"] == 2
    assert stats["retained_channels"] == 3
    assert stats["active_subscribers"] == 3
    assert stats["active_stream_connections"] == 3
    assert stats["stream_connections_total"] == 3
    assert isinstance(stats["memory_rss_bytes"], int)

    text = daemon.request("GET", "/api/stats?verbose=yes", auth=True).body.decode()
    assert "channels:\n- b | subscribers=2 | idle_seconds=0\n" in text
    assert len(held) == 3


def test_stats_xml_uses_camel_case_elements(daemon: Daemon) -> None:
    reply = daemon.request("GET", "/api/stats?mode=xml&verbose=on", auth=True)
    assert lower(reply.headers)["content-type"] == "application/xml; charset=utf-8"
    body = reply.body.decode()
    assert body.startswith("<?xml")
    for element in ("repositoryUrl", "activeStreamConnections", "memoryRssBytes"):
        assert f"<{element}>" in body
    assert "<channels>" in body


def test_stats_json_has_snake_case_keys(daemon: Daemon) -> None:
    reply = daemon.request("GET", "/api/stats?mode=json", auth=True)
    assert lower(reply.headers)["content-type"] == "application/json; charset=utf-8"
    document = reply.json()
    assert document["channels"] == []
    assert "repository_url" in document


@pytest.mark.parametrize("query", ["?mode=yaml", "?mode=", "?mode=JSON"])
def test_stats_refuses_unknown_modes(daemon: Daemon, query: str) -> None:
    assert daemon.request("GET", "/api/stats" + query, auth=True).status == 400


def test_stats_requires_the_publish_secret(daemon: Daemon) -> None:
    assert daemon.request("GET", "/api/stats").status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert daemon.request("GET", "/api/stats", headers=wrong).status == 401
    assert daemon.stats()["auth_failures_total"] == 2


def test_stream_token_is_not_accepted_as_publish_secret(daemon: Daemon) -> None:
    headers = {"Authorization": "Bearer " + make_token("room")}
    assert daemon.request("GET", "/api/stats", headers=headers).status == 401
