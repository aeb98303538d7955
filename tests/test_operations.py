"""Operations against the real daemon: metrics, systemd notification, the
drain, SIGHUP reloads, secret rotation, token expiry, connection limits."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    PUBLISH_SECRET,
    SECRET,
    UNIT,
    Daemon,
    Stream,
    connect,
    make_token,
    read_until_closed,
    request,
    wait_until,
)
from rpushd import tokens
from subscribers import open_envelopes

OTHER_SECRET = "another-subscribe-secret-0123456789abcdef"
OTHER_PUBLISH_SECRET = "another-publish-secret-0123456789abcdef"


def open_envelope(daemon: Daemon, channel: str, ttl: int = 3600) -> Stream:
    """An envelope stream on ``channel``, past its hello."""
    stream = Stream.open(
        daemon.port, channel, make_token(channel, ttl=ttl), envelope=True
    )
    assert stream.status == 200
    assert json.loads(stream.next_frame())["type"] == "hello"
    return stream


def stats_answer(daemon: Daemon) -> bool:
    """Whether /api/stats answers 200 (a connection slot is free again)."""
    try:
        reply = daemon.request("GET", "/api/stats", auth=True)
    except OSError:
        return False
    return reply.status == 200


def end_times(streams: list[Stream], timeout: float = 5 * UNIT) -> list[float]:
    """When each stream's connection was closed by the daemon."""
    selector = selectors.DefaultSelector()
    for stream in streams:
        stream.sock.setblocking(False)
        selector.register(stream.sock, selectors.EVENT_READ)
    ended: list[float] = []
    deadline = time.monotonic() + timeout
    while len(ended) < len(streams) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if not sock.recv(65536):
                selector.unregister(sock)
                ended.append(time.monotonic())
    assert len(ended) == len(streams), "not every stream ended"
    return ended


# Metrics.


def test_metrics_expose_every_stats_figure_and_the_histograms(
    daemon: Daemon,
) -> None:
    held = daemon.subscribe("m")
    daemon.publish("m", 1)
    Stream.open(daemon.port, "m", make_token("other")).close()

    reply = daemon.request("GET", "/metrics", auth=True)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = reply.body.decode()
    for line in (
        "rpushd_publish_requests_total 1.0",
        "rpushd_active_subscribers 1.0",
        "rpushd_stream_connections_total 1.0",
        'rpushd_refused_subscriptions_total{reason="wrong_channel"} 1.0',
        "rpushd_fanout_seconds_count 1.0",
        "rpushd_publish_seconds_count 1.0",
    ):
        assert line in text, line
    for name in ("memory_rss_bytes", "uptime_seconds", "auth_failures_total"):
        assert f"rpushd_{name}" in text
    held.close()


def test_metrics_parse_with_every_family_declared_once(daemon: Daemon) -> None:
    Stream.open(daemon.port, "m", make_token("other")).close()
    reply = daemon.request("GET", "/metrics", auth=True)
    assert reply.status == 200
    text = reply.body.decode()

    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), names
    for declaration in ("# HELP ", "# TYPE "):
        declared = [
            line.split()[2]
            for line in text.splitlines()
            if line.startswith(declaration)
        ]
        assert len(declared) == len(set(declared)), declared

    # Every reason counts from zero, so that a sum is there before any refusal.
    refused = next(f for f in families if f.name == "rpushd_refused_subscriptions")
    counts = {
        sample.labels["reason"]: sample.value
        for sample in refused.samples
        if sample.name.endswith("_total")
    }
    assert counts == {reason: 0.0 for reason in tokens.REASONS} | {"wrong_channel": 1}
    assert daemon.stats()["refused_subscriptions_total"] == 1


def test_metrics_require_the_publish_secret(daemon: Daemon) -> None:
    assert daemon.request("GET", "/metrics").status == 401


# Structured logs.


def test_json_log_format_writes_one_object_a_line() -> None:
    with Daemon(log_format="json") as daemon:
        daemon.request("GET", "/api/stats")
        daemon.stop()
    records = [json.loads(line) for line in daemon.lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("listening on") for r in records)
    assert any(r["level"] == "WARNING" for r in records)


# systemd.


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5 * UNIT)
    yield sock
    sock.close()


def test_systemd_hears_ready_watchdog_and_stopping(
    notify_socket: socket.socket,
) -> None:
    env = {
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "400000",
    }
    with Daemon(env) as daemon:
        messages = [notify_socket.recv(4096).decode()]
        assert "READY=1" in messages[0]
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
        assert daemon.stop() == 0

    while b"STOPPING=1" not in (message := notify_socket.recv(4096)):
        assert message == b"WATCHDOG=1"


# Drain.


def test_drain_ends_streams_over_the_drain_period_each_told_why() -> None:
    with Daemon(drain_secs="1") as daemon:
        plain = [daemon.subscribe("d") for _ in range(20)]
        envelope = open_envelope(daemon, "d")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for_log("ending 21 streams over 0.6 s, 3 every 0.1 s")

        endings = end_times(plain)
        assert max(endings) - min(endings) >= 0.5
        assert b'{"type":"close","reason":"shutdown"}' in envelope.read_to_end()
        assert daemon.stop() == 0


def test_drain_of_a_few_streams_says_it_ends_them_sooner_than_the_period() -> None:
    with Daemon(drain_secs="3") as daemon:
        streams = [daemon.subscribe("few") for _ in range(5)]
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        line = daemon.wait_for_log("ending 5 streams")
        assert "over 0.4 s, 1 every 0.1 s" in line
        assert "RPUSHD_DRAIN_SECS=3 is the most a drain takes" in line

        endings = end_times(streams)
        assert max(endings) - min(endings) < 2 * UNIT
        assert daemon.stop() == 0


def test_drain_with_no_period_ends_every_stream_at_once() -> None:
    with Daemon(drain_secs="0") as daemon:
        streams = [daemon.subscribe("now") for _ in range(3)]
        assert daemon.stop() == 0
        daemon.wait_for_log("ending 3 streams at once")
        end_times(streams)


# Reload.


def write_env(path: Path, **settings: str) -> None:
    lines = [f"RPUSHD_{name.upper()}={value}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def test_sighup_applies_new_secrets_without_dropping_streams(tmp_path: Path) -> None:
    env_file = tmp_path / "rpushd.env"
    write_env(env_file, secret=SECRET, publish_secret=PUBLISH_SECRET)
    daemon = Daemon({"RPUSHD_SECRET": "", "RPUSHD_PUBLISH_SECRET": ""})
    with daemon.start("--env-file", str(env_file)):
        stream = daemon.subscribe("r")

        write_env(env_file, secret=OTHER_SECRET, publish_secret=OTHER_PUBLISH_SECRET)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")

        assert daemon.publish("r", "old secret").status == 401
        auth = {"Authorization": f"Bearer {OTHER_PUBLISH_SECRET}"}
        body = {"channel": "r", "message": "new secret"}
        reply = request(daemon.port, "POST", "/api/publish", body, auth)
        assert reply.status == 204
        assert stream.next_message() == "new secret"

        token = make_token("r", secret=OTHER_SECRET)
        assert Stream.open(daemon.port, "r", token).status == 200
        assert Stream.open(daemon.port, "r", make_token("r")).status == 401


def test_sighup_with_a_bad_file_keeps_the_running_configuration(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    write_env(env_file, secret=SECRET, publish_secret=PUBLISH_SECRET)
    daemon = Daemon({"RPUSHD_SECRET": "", "RPUSHD_PUBLISH_SECRET": ""})
    with daemon.start("--env-file", str(env_file)):
        stream = daemon.subscribe("r")
        write_env(env_file, secret=SECRET, publish_secret="", heartbeat_secs="0")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        line = daemon.wait_for_log("reload refused")
        assert "RPUSHD_" in line

        assert daemon.publish("r", "still").status == 204
        assert stream.next_message() == "still"


def test_sighup_can_change_the_heartbeat_interval(tmp_path: Path) -> None:
    env_file = tmp_path / "rpushd.env"
    write_env(env_file, secret=SECRET, publish_secret=PUBLISH_SECRET)
    daemon = Daemon({"RPUSHD_SECRET": "", "RPUSHD_PUBLISH_SECRET": ""})
    with daemon.start("--env-file", str(env_file)):
        stream = daemon.subscribe("h")
        write_env(
            env_file, secret=SECRET, publish_secret=PUBLISH_SECRET, heartbeat_secs="1"
        )
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("configuration reloaded")
        assert stream.next_frame(timeout=3 * UNIT) == b""


def start_from_env_file(env_file: Path, **settings: str) -> Daemon:
    """A daemon whose settings, secrets included, come from ``env_file``."""
    write_env(env_file, secret=SECRET, publish_secret=PUBLISH_SECRET, **settings)
    daemon = Daemon({"RPUSHD_SECRET": "", "RPUSHD_PUBLISH_SECRET": ""})
    return daemon.start("--env-file", str(env_file))


def reload_with(daemon: Daemon, env_file: Path, **settings: str) -> None:
    """Rewrite ``env_file`` with ``settings`` and wait for the reload."""
    write_env(env_file, secret=SECRET, publish_secret=PUBLISH_SECRET, **settings)
    reloads = daemon.log_text().count("configuration reloaded")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: daemon.log_text().count("configuration reloaded") > reloads,
        what="configuration reloaded",
    )


def test_sighup_keeps_the_log_format_and_says_it_needs_a_restart(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file) as daemon:
        for _ in range(2):
            reload_with(daemon, env_file, log_format="json")
        warnings = [
            line
            for line in daemon.lines
            if "RPUSHD_LOG_FORMAT changes only with a restart; kept text" in line
        ]
        # Every reload says so again: the running format is still text.
        assert len(warnings) == 2, daemon.log_text()
        assert all(not line.startswith("{") for line in daemon.lines)


def test_sighup_with_max_connections_0_goes_back_to_the_default_limit(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file, max_connections="1") as daemon:
        held = daemon.subscribe("limit")
        reload_with(daemon, env_file, max_connections="0")
        # Refused with 503 if the limit of 1 were kept.
        second = daemon.subscribe("limit")
        for stream in (held, second):
            stream.close()


def test_sighup_with_a_shorter_idle_ttl_sweeps_on_the_new_ttl(
    tmp_path: Path,
) -> None:
    # Started with an hour, the sweep runs every 300 s; after the reload
    # it must run as often as the new TTL needs.
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file, channel_idle_ttl_secs="3600") as daemon:
        assert daemon.publish("idle", 1).status == 204
        reload_with(daemon, env_file, channel_idle_ttl_secs="1")
        wait_until(lambda: daemon.stats()["retained_channels"] == 0, 5 * UNIT)
        daemon.wait_for_log("dropped 1 idle channels")


def test_sighup_that_turns_expiry_on_says_which_streams_it_applies_to(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file) as daemon:
        reload_with(daemon, env_file, enforce_token_expiry="1")
        daemon.wait_for_log(
            "RPUSHD_ENFORCE_TOKEN_EXPIRY applies to streams opened from now on"
        )


# Rotation.


def test_previous_secrets_are_accepted_while_set() -> None:
    env = {
        "RPUSHD_SECRET": OTHER_SECRET,
        "RPUSHD_SECRET_PREVIOUS": SECRET,
        "RPUSHD_PUBLISH_SECRET": OTHER_PUBLISH_SECRET,
        "RPUSHD_PUBLISH_SECRET_PREVIOUS": PUBLISH_SECRET,
    }
    with Daemon(env) as daemon:
        old = daemon.subscribe("rot")
        new = daemon.subscribe("rot", make_token("rot", secret=OTHER_SECRET))
        assert daemon.publish("rot", "via previous").status == 204
        auth = {"Authorization": f"Bearer {OTHER_PUBLISH_SECRET}"}
        body = {"channel": "rot", "message": "via current"}
        assert request(daemon.port, "POST", "/api/publish", body, auth).status == 204
        for stream in (old, new):
            assert stream.next_message() == "via previous"
            assert stream.next_message() == "via current"


def test_short_or_equal_secrets_are_warned_about_at_start() -> None:
    env = {"RPUSHD_SECRET": "short", "RPUSHD_PUBLISH_SECRET": "short"}
    with Daemon(env) as daemon:
        daemon.wait_for_log("RPUSHD_SECRET is shorter than 32 bytes")
        daemon.wait_for_log("are equal")


def test_unknown_rpushd_variables_are_warned_about_at_start() -> None:
    env = {
        "RPUSHD_HEARTBEAT_SEC": "1",
        "RPUSHD_TYPO": "1",
        "RPUSHD_TEST_TIMEOUT_UNIT": "1",
        "RPUSHD_FUZZ_PROFILE": "ci",
    }
    with Daemon(env) as daemon:
        line = daemon.wait_for_log("RPUSHD_HEARTBEAT_SEC is not an rpushd setting")
        assert "WARNING" in line
        assert "did you mean RPUSHD_HEARTBEAT_SECS?" in line
        daemon.wait_for_log("RPUSHD_TYPO is not an rpushd setting")
        # Start-up warnings come before the listening line, so all are in.
        assert "RPUSHD_TEST_" not in daemon.log_text()
        assert "RPUSHD_FUZZ_" not in daemon.log_text()


def test_unknown_variables_in_the_env_file_are_warned_about_on_reload(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file) as daemon:
        reload_with(daemon, env_file, history_sise="10")
        daemon.wait_for_log("RPUSHD_HISTORY_SISE is not an rpushd setting")


# Token expiry.


def test_enforced_expiry_ends_each_transport_with_a_reason() -> None:
    with Daemon(enforce_token_expiry="1") as daemon:
        token = make_token("exp", ttl=1)
        plain = daemon.subscribe("exp", token)
        envelope = open_envelope(daemon, "exp", ttl=1)
        keeps = daemon.subscribe("exp", make_token("exp", ttl=60))

        assert plain.read_to_end(timeout=4 * UNIT).endswith(b"0\r\n\r\n")
        ending = envelope.read_to_end(timeout=4 * UNIT)
        assert b'{"type":"close","reason":"token_expired"}' in ending
        daemon.publish("exp", "still here")
        assert keeps.next_message() == "still here"


def test_expiry_is_not_enforced_by_default(daemon: Daemon) -> None:
    stream = daemon.subscribe("exp", make_token("exp", ttl=1))
    deadline = time.time() + 2.5
    while time.time() < deadline:
        stream.next_frame(timeout=2 * UNIT)
    daemon.publish("exp", "kept")
    assert stream.next_message() == "kept"


# Connection limit.


def test_connections_beyond_the_limit_get_503_and_nobody_is_evicted() -> None:
    with Daemon(max_connections="3") as daemon:
        streams = [daemon.subscribe("full") for _ in range(3)]
        with connect(daemon.port) as extra:
            response = read_until_closed(extra)
        assert response.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 5" in response

        streams.pop().close()
        wait_until(lambda: stats_answer(daemon))
        assert daemon.publish("full", "still served").status == 204
        for stream in streams:
            assert stream.next_message() == "still served"


def test_refused_connections_are_counted() -> None:
    with Daemon(max_connections="1") as daemon:
        held = daemon.subscribe("one")
        with connect(daemon.port) as extra:
            read_until_closed(extra)
        held.close()
        wait_until(lambda: stats_answer(daemon))
        assert daemon.stats()["refused_connections_total"] == 1


def test_default_connection_limit_follows_the_open_file_limit() -> None:
    with Daemon() as daemon:
        assert daemon.process is not None
        limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        assert soft == hard
        assert os.getpid() != daemon.process.pid


def test_sighup_with_a_smaller_history_applies_to_existing_channels(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    with start_from_env_file(env_file) as daemon:
        assert daemon.publish("held", 0).status == 204
        reload_with(daemon, env_file, history_size="2")

        body = {"channel": "held", "message": 1, "return_id": True}
        ids = [
            daemon.request("POST", "/api/publish", body, auth=True).json()["id"]
            for _ in range(6)
        ]
        stream = open_envelopes(daemon.port, "held", last_id=ids[0])
        hello = stream.next_envelope()
        assert hello["replay"] == 3
        assert stream.next_envelope() == {
            "type": "gap",
            "channel": "held",
            "reason": "too_old",
        }
        assert [stream.next_envelope()["id"] for _ in range(2)] == ids[-2:]
