"""Real reverse proxies in front of a real daemon, and stream clients.

nginx, HAProxy and Apache each run in the foreground from a temporary
directory, with a generated main configuration around the file shipped in
deploy/, whose daemon address is rewritten to the test daemon's. The site
around that file is unkind on purpose: it compresses every response it can
and answers, with 200, any path the shipped file lets through to it, so a
file that leaned on the site's defaults would fail. A missing proxy fails
the tests that need it rather than skipping them: CI installs all three
(Debian packages nginx, haproxy and apache2), and no file is shipped
untested.

The clients speak the three transports of docs/STREAMS.md over raw
sockets: :class:`helpers.Stream` for frames, :class:`EventStream` for
Server-Sent Events and :class:`WebSocketClient` for WebSockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

import helpers
from helpers import (
    UNIT,
    Daemon,
    Dechunker,
    Reply,
    Stream,
    connect,
    free_port,
    make_token,
    read_head,
    receive_some,
    request,
    wait_ready,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SHIPPED_ADDRESS = "127.0.0.1:45831"
PREFIX = "/push-daemon"
START_ATTEMPTS = 3
# What a browser offers; every stream must come back uncompressed anyway.
BROWSER_HEADERS = {"Accept-Encoding": "gzip, deflate, br"}


def find_executable(name: str, package: str) -> str:
    """``name`` on PATH or in /usr/sbin; fail the test without it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin")
    if found is None:
        pytest.fail(
            f"{name} is required for these tests and was found neither on PATH "
            f"nor in /usr/sbin; install it (apt-get install {package})",
            pytrace=False,
        )
    return found


def running_as_root() -> bool:
    return os.geteuid() == 0


class Proxy:
    """One reverse proxy in the foreground; subclasses write its config.

    ``timeout_secs`` replaces every timeout of the shipped file that a
    stream's heartbeats must outlast (75 s as shipped), and the site's
    client-side timeout with it.
    """

    name: ClassVar[str]
    executable_name: ClassVar[str]
    package: ClassVar[str]
    shipped: ClassVar[Path]
    # The shipped timeouts that heartbeats must outlast, as a pattern whose
    # one group is the number of seconds.
    timeout_pattern: ClassVar[str]
    # What the configuration check prints when it passes.
    check_passed: ClassVar[str]
    # How long a stop may take before the process group is killed.
    stop_grace: ClassVar[float] = 5 * UNIT

    def __init__(
        self, directory: Path, upstream: str, *, timeout_secs: int | None = None
    ) -> None:
        self.executable = find_executable(self.executable_name, self.package)
        self.directory = directory
        self.upstream = upstream
        self.timeout_secs = timeout_secs
        self.client_timeout_secs = timeout_secs or 75
        self.error_log = directory / "error.log"
        self.output = directory / "output.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # Configuration.

    @classmethod
    def stream_timeouts(cls) -> list[int]:
        """The timeouts of the shipped file that streams meet, in seconds."""
        return [int(found) for found in re.findall(cls.timeout_pattern, cls.text())]

    @classmethod
    def text(cls) -> str:
        return cls.shipped.read_text()

    def shipped_config(self) -> str:
        """The shipped file, pointed at the test daemon."""
        text = self.text()
        assert SHIPPED_ADDRESS in text, "the file must proxy to the default address"
        text = text.replace(SHIPPED_ADDRESS, self.upstream)
        if self.timeout_secs is not None:
            text, count = re.subn(
                self.timeout_pattern,
                lambda found: found[0].replace(found[1], str(self.timeout_secs)),
                text,
            )
            assert count, "no timeout to shorten"
        return text

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        """The command line that runs the proxy in the foreground."""
        raise NotImplementedError

    def check_command(self) -> list[str]:
        """The command line that only checks the configuration."""
        raise NotImplementedError

    # Running.

    def start(self) -> Proxy:
        """Start on a free port and wait until a request passes through.

        The port is free when chosen but could be taken before the proxy
        binds it, so a start that fails for that reason is retried on
        another.
        """
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self.write_config()
            self.error_log.unlink(missing_ok=True)
            with self.output.open("wb") as output:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(10 * UNIT):
                return self
            if "Address already in use" not in self.log_text():
                break
        raise AssertionError(f"{self.name} did not start:\n" + self.log_text())

    def _wait_ready(self, timeout: float) -> bool:
        """Poll healthz through the proxy; ``False`` if it exits first."""
        assert self.process is not None
        return wait_ready(
            self.process,
            self.port,
            f"{PREFIX}/healthz",
            timeout,
            lambda: f"{self.name}:\n{self.log_text()}",
        )

    def stop(self) -> None:
        """Stop at once: a graceful stop would wait for every open stream."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_text(self) -> str:
        parts = []
        for path in (self.output, self.error_log):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts) or "(no log)"

    # Clients.

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: bool = False,
    ) -> Reply:
        """One request to ``PREFIX + path`` through the proxy."""
        return request(self.port, method, PREFIX + path, body, headers, auth=auth)

    def open_stream(self, channel: str, token: str | None = None) -> Stream:
        return Stream.open(
            self.port,
            channel,
            token or make_token(channel),
            path_prefix=PREFIX,
            headers=BROWSER_HEADERS,
        )

    def open_many(self, channels: list[str]) -> Stream:
        """A stream of several channels (``POST /api/stream``)."""
        subscriptions = [
            {"channel": channel, "token": make_token(channel)} for channel in channels
        ]
        body = json.dumps({"subscriptions": subscriptions}).encode()
        head = (
            f"POST {PREFIX}/api/stream HTTP/1.1\r\nHost: localhost\r\n"
            f"{header_lines(BROWSER_HEADERS)}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock = connect(self.port)
        sock.sendall(head.encode() + body)
        status, headers, rest = read_head(sock)
        stream = Stream(
            sock, status, headers, headers.get("transfer-encoding") == "chunked"
        )
        stream._absorb(rest)
        return stream

    def open_events(self, channels: list[str]) -> EventStream:
        return EventStream.open(self.port, PREFIX + "/api/events?" + query(channels))

    def open_websocket(
        self, channels: list[str], token: str | None = None
    ) -> WebSocketClient:
        target = PREFIX + "/api/ws?" + query(channels, token)
        return WebSocketClient.open(self.port, target)


def header_lines(headers: Mapping[str, str]) -> str:
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items())


def query(channels: list[str], token: str | None = None) -> str:
    """``channel=...&token=...`` pairs for ``channels``, in order.

    Each channel gets a valid token of its own, or ``token`` if given.
    """
    pairs = []
    for channel in channels:
        pairs += [("channel", channel), ("token", token or make_token(channel))]
    return urlencode(pairs)


class Nginx(Proxy):
    """nginx (run by :class:`helpers.Nginx`) with the snippet in its server."""

    name = "nginx"
    executable_name = "nginx"
    package = "nginx"
    shipped = DEPLOY / "nginx-location.conf"
    timeout_pattern = r"proxy_(?:read|send)_timeout (\d+)s;"
    check_passed = "test is successful"

    def __init__(
        self, directory: Path, upstream: str, *, timeout_secs: int | None = None
    ) -> None:
        super().__init__(directory, upstream, timeout_secs=timeout_secs)
        snippet = directory / "rpushd.conf"
        # The site ignores the daemon's "X-Accel-Buffering: no", and has
        # locations of its own that would answer any path let through.
        server = f"""
        include {snippet};

        location / {{
            return 200 "the site";
        }}
        location ~ \\.php$ {{
            return 200 "the site's php";
        }}
"""
        http = f"""
    gzip on;
    gzip_types *;
    gzip_min_length 1;
    proxy_ignore_headers X-Accel-Buffering;
    send_timeout {self.client_timeout_secs}s;
"""
        self.runner = helpers.Nginx(directory, server=server, http=http)
        self.error_log = self.runner.error_log

    @classmethod
    def stream_timeouts(cls) -> list[int]:
        # Only the locations that proxy to /api/ serve streams; healthz
        # keeps a short timeout of its own.
        timeouts = []
        for location in cls.text().split("\nlocation ")[1:]:
            if "/api/" in location:
                found = re.findall(cls.timeout_pattern, location)
                timeouts += [int(seconds) for seconds in found]
        return timeouts

    def start(self) -> Proxy:
        (self.directory / "rpushd.conf").write_text(self.shipped_config())
        self.runner.start()
        self.port = self.runner.port
        return self

    def stop(self) -> None:
        self.runner.stop()

    def log_text(self) -> str:
        return self.runner.log_text()

    def check_command(self) -> list[str]:
        return self.runner.command("-t")


class HAProxy(Proxy):
    """HAProxy: a generated site frontend, then the shipped backend file."""

    name = "haproxy"
    executable_name = "haproxy"
    package = "haproxy"
    shipped = DEPLOY / "haproxy.cfg"
    timeout_pattern = r"timeout (?:server|tunnel) +(\d+)s"
    check_passed = "Configuration file is valid"
    # The one line the shipped file asks the site's frontend to add.
    USE_BACKEND = "use_backend rpushd if { path_beg /push-daemon/ }"

    def write_config(self) -> None:
        (self.directory / "site.cfg").write_text(self._site_config())
        (self.directory / "rpushd.cfg").write_text(self.shipped_config())

    def _site_config(self) -> str:
        assert self.USE_BACKEND in self.text(), "the file must say how to use it"
        # The site compresses every type it may, and its own backend
        # answers any path the rpushd backend would not get.
        return f"""
global
    maxconn 256

defaults
    mode http
    timeout connect 5s
    timeout client {self.client_timeout_secs}s
    timeout server 75s
    timeout http-request 10s
    compression algo gzip
    compression type application/octet-stream text/event-stream
    compression type application/json text/plain text/html

frontend site
    bind 127.0.0.1:{self.port}
    {self.USE_BACKEND}
    default_backend site

backend site
    http-request return status 200 content-type text/plain string "the site"
"""

    def _files(self) -> list[str]:
        return [
            "-f", str(self.directory / "site.cfg"),
            "-f", str(self.directory / "rpushd.cfg"),
        ]  # fmt: skip

    def command(self) -> list[str]:
        return [self.executable, "-db", *self._files()]

    def check_command(self) -> list[str]:
        return [self.executable, "-c", *self._files()]


# Apache's modules: the ones the shipped file names, and the site's own.
APACHE_MODULES = {
    "mpm_event_module": "mod_mpm_event.so",
    "authz_core_module": "mod_authz_core.so",
    "proxy_module": "mod_proxy.so",
    "proxy_http_module": "mod_proxy_http.so",
    "headers_module": "mod_headers.so",
    "env_module": "mod_env.so",
    "deflate_module": "mod_deflate.so",
    "dir_module": "mod_dir.so",
}
APACHE_MODULE_DIR = Path("/usr/lib/apache2/modules")


class Apache(Proxy):
    """Apache 2.4 with the shipped file included in its one VirtualHost."""

    name = "apache"
    executable_name = "apache2"
    package = "apache2"
    shipped = DEPLOY / "apache-rpushd.conf"
    timeout_pattern = r" timeout=(\d+)"
    check_passed = "Syntax OK"
    # On SIGTERM Apache's parent waits for each worker thread still inside
    # a proxied stream, and polls for it at growing intervals: seconds
    # spent on nothing a test needs.
    stop_grace = 0.5 * UNIT

    def __init__(
        self, directory: Path, upstream: str, *, timeout_secs: int | None = None
    ) -> None:
        super().__init__(directory, upstream, timeout_secs=timeout_secs)
        self.site: Path | None = None

    def write_config(self) -> None:
        if self.site is None:
            # Apache's workers drop root for "nobody", who cannot enter the
            # private temporary directory: the site's files live apart.
            self.site = Path(tempfile.mkdtemp(prefix="rpushd-apache-site-"))
            self.site.chmod(0o755)
            (self.site / "index.html").write_text("the site\n")
        (self.directory / "rpushd.conf").write_text(self.shipped_config())
        (self.directory / "apache.conf").write_text(self._main_config())

    def _main_config(self) -> str:
        loads = "".join(
            f"<IfModule !{module}>\n"
            f"    LoadModule {module} {APACHE_MODULE_DIR / filename}\n"
            "</IfModule>\n"
            for module, filename in APACHE_MODULES.items()
        )
        # Apache refuses to serve as root, so a root parent hands its
        # workers to "nobody"; as anyone else it stays who it is.
        user = ""
        if running_as_root():
            nobody = pwd.getpwnam("nobody")
            user = f"User #{nobody.pw_uid}\nGroup #{nobody.pw_gid}"

        # The site compresses everything and, through FallbackResource,
        # answers 200 for any path that reaches it.
        return f"""
ServerRoot {self.directory}
DefaultRuntimeDir {self.directory}
PidFile {self.directory / "apache.pid"}
ErrorLog {self.error_log}
LogLevel warn
Listen 127.0.0.1:{self.port}
ServerName localhost
Timeout {self.client_timeout_secs}
{user}
{loads}
<VirtualHost 127.0.0.1:{self.port}>
    DocumentRoot {self.site}
    <Directory {self.site}>
        Require all granted
        FallbackResource /index.html
    </Directory>
    SetOutputFilter DEFLATE

    Include {self.directory / "rpushd.conf"}
</VirtualHost>
"""

    def _config_args(self) -> list[str]:
        return ["-f", str(self.directory / "apache.conf")]

    def command(self) -> list[str]:
        return [self.executable, *self._config_args(), "-DFOREGROUND"]

    def check_command(self) -> list[str]:
        return [self.executable, *self._config_args(), "-t"]

    def stop(self) -> None:
        super().stop()
        if self.site is not None:
            shutil.rmtree(self.site, ignore_errors=True)
            self.site = None


PROXIES: list[type[Proxy]] = [Nginx, HAProxy, Apache]


@contextlib.contextmanager
def running_proxy(
    kind: type[Proxy],
    daemon: Daemon,
    directory: Path,
    *,
    timeout_secs: int | None = None,
) -> Iterator[Proxy]:
    """A ``kind`` proxy in front of ``daemon``, stopped whatever happens."""
    proxy = kind(directory, f"{daemon.host}:{daemon.port}", timeout_secs=timeout_secs)
    try:
        yield proxy.start()
    finally:
        proxy.stop()
        # Shown by pytest only when a test failed.
        print(f"{proxy.name} log:\n" + proxy.log_text())


# Clients for the other transports.


class EventStream:
    """A raw EventSource: its response head, then events one by one.

    An event is a dict of its fields; a comment line (the heartbeat) is
    ``{":": ""}`` and the opening ``retry:`` is ``{"retry": "2000"}``.
    """

    def __init__(self, sock: socket.socket, status: int, head: dict[str, str]):
        self.sock = sock
        self.status = status
        self.head = head
        self._dechunker = (
            Dechunker() if head.get("transfer-encoding") == "chunked" else None
        )
        self._text = b""
        self._events: list[dict[str, str]] = []
        self.ended = False

    @classmethod
    def open(cls, port: int, target: str) -> EventStream:
        sock = connect(port)
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: localhost\r\n"
            f"Accept: text/event-stream\r\n{header_lines(BROWSER_HEADERS)}\r\n".encode()
        )
        status, head, rest = read_head(sock)
        stream = cls(sock, status, head)
        stream._absorb(rest)
        return stream

    def next_event(self, timeout: float = 5 * UNIT) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self._events:
            if self.ended:
                raise TimeoutError("no event arrived")
            data = receive_some(self.sock, deadline, "event")
            self.ended = not data
            self._absorb(data)
        return self._events.pop(0)

    def next_envelope(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """The data of the next event that has any, decoded as JSON."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if "data" in event:
                return dict(json.loads(event["data"]))

    def _absorb(self, data: bytes) -> None:
        if self._dechunker is not None:
            data = self._dechunker.feed(data)
        self._text += data
        while b"\n\n" in self._text:
            block, self._text = self._text.split(b"\n\n", 1)
            event = {}
            for line in block.decode().split("\n"):
                name, _, value = line.partition(":")
                event[name or ":"] = value.removeprefix(" ")
            self._events.append(event)

    def close(self) -> None:
        self.sock.close()


class WebSocketClient:
    """A raw WebSocket client: the handshake, then frames one by one.

    Pings (the daemon's heartbeats) are returned like any other frame, and
    answered.
    """

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.response: Response | None = None
        self._frames: list[Frame] = []

    @classmethod
    def open(cls, port: int, target: str) -> WebSocketClient:
        """Connect and complete the handshake (see :attr:`status`)."""
        protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{target}"))
        protocol.send_request(protocol.connect())
        client = cls(connect(port), protocol)
        client._send_pending()
        deadline = time.monotonic() + 5 * UNIT
        while client.response is None:
            client._receive(deadline)
        return client

    @property
    def status(self) -> int:
        assert self.response is not None
        return self.response.status_code

    def next_frame(self, timeout: float = 5 * UNIT) -> Frame:
        deadline = time.monotonic() + timeout
        while not self._frames:
            self._receive(deadline)
        return self._frames.pop(0)

    def next_envelope(self, timeout: float = 5 * UNIT) -> dict[str, Any]:
        """The next text message, decoded as JSON."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode is Opcode.TEXT:
                return dict(json.loads(frame.data))

    def _receive(self, deadline: float) -> None:
        data = receive_some(self.sock, deadline, "websocket frame")
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            else:
                self._frames.append(event)
        self._send_pending()
        if not data and self.response is None:
            raise AssertionError("closed during the websocket handshake")
        if not data and not self._frames:
            raise EOFError("the websocket was closed")

    def _send_pending(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
