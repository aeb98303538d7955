"""The shipped nginx snippet, served by a real nginx in front of the daemon.

Each test runs nginx in the foreground from a temporary prefix, with a
generated nginx.conf whose only server includes deploy/nginx-location.conf,
its daemon address rewritten to the test daemon's. nginx is required: CI
installs it, and a missing nginx fails these tests rather than skipping
them, so that the snippet is never shipped untested.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import UNIT, Daemon, Stream, make_token, request

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SNIPPET = DEPLOY / "nginx-location.conf"
SHIPPED_ADDRESS = "127.0.0.1:45831"
PREFIX = "/push-daemon"
START_ATTEMPTS = 3


def find_nginx() -> str:
    """The nginx executable on PATH or in /usr/sbin; fail without one."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.fail(
            "nginx is required for these tests and was found neither on PATH "
            "nor in /usr/sbin; install it (apt-get install nginx)",
            pytrace=False,
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx in the foreground with the shipped snippet in its one server."""

    def __init__(self, executable: str, prefix: Path, upstream: str) -> None:
        self.executable = executable
        self.prefix = prefix
        self.upstream = upstream
        self.config = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # Configuration.

    def write_config(self) -> None:
        snippet = SNIPPET.read_text()
        assert SHIPPED_ADDRESS in snippet, "the snippet must proxy to the default"
        (self.prefix / "rpushd.conf").write_text(
            snippet.replace(SHIPPED_ADDRESS, self.upstream)
        )
        self.config.write_text(self._main_config())

    def _main_config(self) -> str:
        temp = {
            name: self.prefix / name
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        # A root master starts its worker as "nobody", which could not
        # enter the private temporary directory; keep it as ourselves.
        user = ""
        if os.geteuid() == 0:
            owner = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            user = f"user {owner} {group};"

        # The site around the snippet is unkind to it: gzip for every type,
        # the daemon's "X-Accel-Buffering: no" ignored, and locations of
        # its own that would answer any path the snippet let through.
        return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
error_log {self.error_log} notice;
pid {self.prefix / "nginx.pid"};

events {{
    worker_connections 64;
}}

http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};

    gzip on;
    gzip_types *;
    gzip_min_length 1;
    proxy_ignore_headers X-Accel-Buffering;

    server {{
        listen 127.0.0.1:{self.port};
        include {self.prefix / "rpushd.conf"};

        location / {{
            return 200 "the site";
        }}
        location ~ \\.php$ {{
            return 200 "the site's php";
        }}
    }}
}}
"""

    def command(self, *args: str) -> list[str]:
        """An nginx command line confined to the prefix and its config."""
        return [
            self.executable,
            "-p", f"{self.prefix}/",
            "-c", str(self.config),
            "-e", str(self.error_log),
            *args,
        ]  # fmt: skip

    # Running.

    def start(self) -> Nginx:
        """Start on a free port and wait until a request passes through.

        The port is free when chosen but could be taken before nginx binds
        it, so a start that fails for that reason is retried on another.
        """
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self.write_config()
            self.error_log.unlink(missing_ok=True)
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(10 * UNIT):
                return self
            if "Address already in use" not in self.log_text():
                break
        raise AssertionError("nginx did not start:\n" + self.log_text())

    def _wait_ready(self, timeout: float) -> bool:
        """Poll healthz through nginx; ``False`` if nginx exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            try:
                reply = request(self.port, "GET", f"{PREFIX}/healthz")
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            else:
                if reply.status == 200:
                    return True
                last = f"HTTP {reply.status}"
            try:
                self.process.wait(timeout=0.05 * UNIT)
            except subprocess.TimeoutExpired:
                continue
            return False
        raise AssertionError(
            f"nginx not ready after {timeout} s ({last}):\n" + self.log_text()
        )

    def stop(self) -> None:
        """Fast shutdown: SIGQUIT would wait for every open stream to end."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5 * UNIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_text(self) -> str:
        try:
            return self.error_log.read_text()
        except FileNotFoundError:
            return "(no error log)"

    # Clients.

    def open_stream(self, channel: str, token: str | None = None) -> Stream:
        # Browsers offer gzip; the stream must come back uncompressed.
        return Stream.open(
            self.port,
            channel,
            token or make_token(channel),
            path_prefix=PREFIX,
            headers={"Accept-Encoding": "gzip, deflate"},
        )


@contextlib.contextmanager
def running_nginx(daemon: Daemon, prefix: Path) -> Iterator[Nginx]:
    """nginx in front of ``daemon``, stopped even when the test fails."""
    proxy = Nginx(find_nginx(), prefix, f"{daemon.host}:{daemon.port}")
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        # Shown by pytest only when the test failed.
        print("nginx error log:\n" + proxy.log_text())


@pytest.fixture
def nginx(daemon: Daemon, tmp_path: Path) -> Iterator[Nginx]:
    """nginx in front of the ``daemon`` fixture."""
    with running_nginx(daemon, tmp_path) as proxy:
        yield proxy


# The configuration.


def test_nginx_accepts_the_configuration(nginx: Nginx) -> None:
    result = subprocess.run(
        nginx.command("-t"), capture_output=True, text=True, timeout=10 * UNIT
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr


# The public endpoints.


def test_stream_through_nginx_delivers_frames_without_buffering(
    daemon: Daemon, nginx: Nginx
) -> None:
    connecting = time.monotonic()
    stream = nginx.open_stream("room-1")
    try:
        assert stream.status == 200, stream.head
        assert stream.head["content-type"] == "application/octet-stream"
        assert "content-encoding" not in stream.head
        first = stream.next_frame(max(0, connecting + UNIT - time.monotonic()))
        assert first == b"", "the first frame must be a heartbeat"

        assert daemon.publish("room-1", {"n": 1}).status == 204
        assert stream.next_message(timeout=UNIT) == {"n": 1}

        # Interval heartbeats pass too; they keep proxy_read_timeout away.
        assert stream.next_frame(timeout=2 * UNIT) == b""
    finally:
        stream.close()


def test_slow_subscriber_behind_nginx_is_still_disconnected(tmp_path: Path) -> None:
    # nginx must not absorb what its client cannot take (proxy_buffering
    # would spool it to disk): the daemon bounds unsent data per stream
    # and can only do so if the backlog reaches it.
    with (
        Daemon(heartbeat_secs="1", max_pending_bytes="65536") as daemon,
        running_nginx(daemon, tmp_path) as nginx,
    ):
        slow = nginx.open_stream("flood")
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


def test_dotted_channel_reaches_the_daemon_not_the_site(
    daemon: Daemon, nginx: Nginx
) -> None:
    stream = nginx.open_stream("index.php")
    try:
        assert stream.status == 200, stream.head
        assert stream.next_frame(timeout=UNIT) == b""
        assert daemon.stats()["active_subscribers"] == 1
    finally:
        stream.close()


def test_subscription_refusal_passes_through_nginx(nginx: Nginx) -> None:
    stream = nginx.open_stream("room-1", make_token("other-room"))
    try:
        assert stream.status == 401
    finally:
        stream.close()


def test_healthz_answers_through_nginx(nginx: Nginx) -> None:
    reply = request(nginx.port, "GET", f"{PREFIX}/healthz")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}


def test_get_on_the_stream_path_is_refused(daemon: Daemon, nginx: Nginx) -> None:
    reply = request(nginx.port, "GET", f"{PREFIX}/api/stream/room-1")
    # nginx's own refusal: the daemon would have answered 405 itself.
    assert reply.status == 403
    assert daemon.stats()["stream_connections_total"] == 0


def test_oversized_subscribe_body_is_refused_by_nginx(nginx: Nginx) -> None:
    body = {"token": make_token("room-1"), "pad": "x" * 17 * 1024}
    reply = request(nginx.port, "POST", f"{PREFIX}/api/stream/room-1", body)
    assert reply.status == 413
    # nginx's own refusal: the daemon answers its errors in JSON.
    assert "json" not in reply.headers.get("Content-Type", "")


# Everything else stays internal.


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{PREFIX}/api/publish"),
        ("GET", f"{PREFIX}/api/stats?mode=json"),
        ("POST", f"{PREFIX}//api/publish"),
        ("POST", f"{PREFIX}/api/stream/../publish"),
        ("POST", f"{PREFIX}/api/stream/%2e%2e/publish"),
        ("POST", f"{PREFIX}/api/stream/..%2fpublish"),
        ("POST", f"{PREFIX}/api/stream/%2e%2e%2fpublish"),
        ("POST", f"{PREFIX}/healthz/../api/publish"),
    ],
)
def test_privileged_endpoints_are_unreachable_through_nginx(
    daemon: Daemon, nginx: Nginx, method: str, path: str
) -> None:
    body = {"channel": "room-1", "message": 1} if method == "POST" else None
    reply = request(nginx.port, method, path, body, auth=True)
    assert reply.status in (403, 404), reply
    assert daemon.stats()["publish_requests_total"] == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/"),
        ("POST", "/api/stream"),
        ("POST", "/api/stream/"),
        ("POST", "/api/stream/room-1/more"),
        ("GET", "/healthz/more"),
        ("POST", "/api/publish.php"),
        ("GET", "/metrics"),
    ],
)
def test_other_paths_under_the_prefix_answer_404(
    nginx: Nginx, method: str, path: str
) -> None:
    body = {"token": make_token("room-1")} if method == "POST" else None
    assert request(nginx.port, method, PREFIX + path, body).status == 404
