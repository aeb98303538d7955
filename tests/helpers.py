"""Shared test tools: a real daemon in a subprocess, raw HTTP clients, nginx.

Every wait in the tests is a multiple of ``UNIT`` seconds, which the
environment variable ``RPUSHD_TEST_TIMEOUT_UNIT`` scales on slow machines.
Readiness is awaited by watching for what the daemon prints or sends,
never by sleeping.
"""

from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rpushd import tokens
from rpushd.frames import FrameDecoder

UNIT = float(os.environ.get("RPUSHD_TEST_TIMEOUT_UNIT", "1"))
SECRET = "test-subscribe-secret-0123456789abcdef"
PUBLISH_SECRET = "test-publish-secret-0123456789abcdef"


class Daemon:
    """``python -m rpushd serve`` on an ephemeral loopback port."""

    def __init__(self, env: Mapping[str, str] | None = None, **settings: str):
        self.env = {
            **os.environ,
            "RPUSHD_LISTEN": "127.0.0.1:0",
            "RPUSHD_SECRET": SECRET,
            "RPUSHD_PUBLISH_SECRET": PUBLISH_SECRET,
            "RPUSHD_LOG_LEVEL": "debug",
            **(env or {}),
        }
        for name, value in settings.items():
            self.env["RPUSHD_" + name.upper()] = value
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str | None] = queue.Queue()
        self.process: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def start(self, *args: str) -> Daemon:
        """Start and wait until it logs that it listens."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rpushd", "serve", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            line = self.wait_for_log("listening on", 10 * UNIT)
        except BaseException:
            # Never leave a daemon behind when it did not come up as asked.
            self.kill()
            raise
        # Text and JSON log lines alike: the address ends at a space or quote.
        after = line.rsplit("listening on ", 1)[1]
        address = re.split(r'[\s"]', after, maxsplit=1)[0]
        self.port = int(address.rsplit(":", 1)[1])
        return self

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._new_lines.put(line)
        self._new_lines.put(None)

    def wait_for_log(self, text: str, timeout: float = 5 * UNIT) -> str:
        """Wait for a stderr line containing ``text`` (past lines count)."""
        for line in list(self.lines):
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._new_lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(
                    f"daemon exited before logging {text!r}:\n" + self.log_text()
                )
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r}:\n" + self.log_text())

    def log_text(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10 * UNIT) -> int:
        """Signal the daemon and return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # Requests.

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: bool = False,
    ) -> Reply:
        """One request on a fresh connection."""
        return request(
            self.port, method, path, body, headers, auth=auth, host=self.host
        )

    def publish(self, channel: str, message: Any) -> Reply:
        return self.request(
            "POST", "/api/publish", {"channel": channel, "message": message}, auth=True
        )

    def stats(self) -> dict[str, Any]:
        reply = self.request("GET", "/api/stats?mode=json&verbose=1", auth=True)
        assert reply.status == 200, reply
        return dict(json.loads(reply.body))

    def subscribe(self, channel: str, token: str | None = None, **kw: Any) -> Stream:
        """Open a stream and wait for its first heartbeat."""
        stream = Stream.open(self.port, channel, token or make_token(channel), **kw)
        assert stream.status == 200, stream.head
        assert stream.next_frame() == b"", "the first frame must be a heartbeat"
        return stream

    def __enter__(self) -> Daemon:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    auth: bool = False,
    host: str = "127.0.0.1",
) -> Reply:
    """One request to ``host:port`` on a fresh connection.

    A dict body is sent as JSON; ``auth`` adds the publish secret.
    """
    all_headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        all_headers.setdefault("Content-Type", "application/json")
    if auth:
        all_headers.setdefault("Authorization", f"Bearer {PUBLISH_SECRET}")

    connection = http.client.HTTPConnection(host, port, timeout=5 * UNIT)
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def wait_until(
    condition: Callable[[], bool], timeout: float = 5 * UNIT, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what or 'a condition'}"
            )
        time.sleep(0.02 * UNIT)


def wait_ready(
    process: subprocess.Popen[Any],
    port: int,
    path: str,
    timeout: float,
    describe: Callable[[], str],
) -> bool:
    """Poll ``GET path`` on ``port`` until it answers 200.

    Returns ``False`` if ``process`` exits first (a caller may retry on
    another port); fails with ``describe()`` if the time runs out.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            reply = request(port, "GET", path)
        except (OSError, http.client.HTTPException) as exc:
            last = repr(exc)
        else:
            if reply.status == 200:
                return True
            last = f"HTTP {reply.status}"
        try:
            process.wait(timeout=0.05 * UNIT)
        except subprocess.TimeoutExpired:
            continue
        return False
    raise AssertionError(f"not ready after {timeout} s ({last}):\n" + describe())


def make_token(channel: str, ttl: int = 3600, secret: str = SECRET) -> str:
    return tokens.mint(channel, secret.encode(), int(time.time()) + ttl)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5 * UNIT) -> bytes:
    """Everything the peer sends until it closes."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def receive_some(sock: socket.socket, deadline: float, what: str) -> bytes:
    """One read before ``deadline``; ``b""`` once the peer has closed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no {what} arrived")
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise TimeoutError(f"no {what} arrived") from None
    except ConnectionResetError:
        return b""


class Dechunker:
    """Undoes the chunked transfer coding as far as the bytes so far allow.

    ``ended`` is set once the last (zero-size) chunk has arrived.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        """Add received bytes; return the body bytes they complete."""
        self._buffer += data
        body = bytearray()
        while not self.ended:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(bytes(self._buffer[:line_end]).split(b";")[0], 16)
            end = line_end + 2 + size + 2
            if size and len(self._buffer) < end:
                break
            if size:
                assert self._buffer[end - 2 : end] == b"\r\n", bytes(self._buffer)
                body += self._buffer[line_end + 2 : end - 2]
                del self._buffer[:end]
            else:
                self.ended = True
        return bytes(body)


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read a response head; return status, lowercased headers, extra bytes."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before a full head: {buffer!r}")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


@dataclass
class Stream:
    """A raw subscriber: its response head, then frames read one by one."""

    sock: socket.socket
    status: int
    head: dict[str, str]
    chunked: bool
    raw: bytearray = field(default_factory=bytearray)
    _dechunker: Dechunker = field(default_factory=Dechunker)
    _frames: list[bytes] = field(default_factory=list)
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    ended: bool = False

    @classmethod
    def open(
        cls,
        port: int,
        channel: str,
        token: str,
        *,
        http10: bool = False,
        path_prefix: str = "",
        headers: Mapping[str, str] | None = None,
        envelope: bool = False,
    ) -> Stream:
        """Subscribe on ``127.0.0.1:port`` and read the response head.

        ``path_prefix`` goes before ``/api/stream/``, for a daemon reached
        through a reverse proxy; ``headers`` are added to the request;
        ``envelope`` asks for envelope frames (docs/STREAMS.md).
        """
        fields: dict[str, Any] = {"token": token}
        if envelope:
            fields["envelope"] = True
        body = json.dumps(fields).encode()
        version = "HTTP/1.0" if http10 else "HTTP/1.1"
        extra = "".join(
            f"{name}: {value}\r\n" for name, value in (headers or {}).items()
        )
        request = (
            f"POST {path_prefix}/api/stream/{channel} {version}\r\n"
            f"Host: localhost\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock = connect(port)
        sock.sendall(request)
        status, headers, rest = read_head(sock)
        chunked = headers.get("transfer-encoding") == "chunked"
        stream = cls(sock, status, headers, chunked)
        stream._absorb(rest)
        return stream

    def next_frame(self, timeout: float = 5 * UNIT) -> bytes:
        """The next frame's payload (``b""`` for a heartbeat)."""
        deadline = time.monotonic() + timeout
        while not self._frames:
            if self.ended:
                raise TimeoutError("no frame arrived")
            data = receive_some(self.sock, deadline, "frame")
            self.ended = not data
            self._absorb(data)
        return self._frames.pop(0)

    def next_message(self, timeout: float = 5 * UNIT) -> Any:
        """The next non-heartbeat frame, decoded as JSON."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.next_frame(max(0.0, deadline - time.monotonic()))
            if payload:
                return json.loads(payload)

    def read_to_end(self, timeout: float = 5 * UNIT) -> bytes:
        """Read until the daemon closes; return all body bytes received."""
        self._absorb(read_until_closed(self.sock, timeout))
        self.ended = True
        return bytes(self.raw)

    def _absorb(self, data: bytes) -> None:
        self.raw += data
        body = self._dechunker.feed(data) if self.chunked else data
        self._frames += self._decoder.feed(body)

    def close(self) -> None:
        self.sock.close()


# nginx in front of the daemon.


def find_nginx() -> str:
    """The nginx executable on PATH or in /usr/sbin; fail without one.

    nginx is required: CI installs it, and a missing nginx fails the tests
    that need it rather than skipping them.
    """
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
    """nginx in the foreground from a private prefix, with one server.

    ``server`` is the body of that server block (everything but its
    ``listen``), ``http`` more directives for the http block around it.
    The server must answer 200 on ``ready_path`` once it can proxy.
    """

    START_ATTEMPTS = 3

    def __init__(
        self,
        prefix: Path,
        server: str,
        http: str = "",
        ready_path: str = "/push-daemon/healthz",
    ) -> None:
        self.executable = find_nginx()
        self.prefix = prefix
        self.server = server
        self.http = http
        self.ready_path = ready_path
        self.config = prefix / "nginx.conf"
        self.error_log = prefix / "error.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    # Configuration.

    def write_config(self) -> None:
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

        self.config.write_text(f"""
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
{self.http}
    server {{
        listen 127.0.0.1:{self.port};
{self.server}
    }}
}}
""")

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
        for _ in range(self.START_ATTEMPTS):
            self.port = free_port()
            if self._launch():
                return self
            if "Address already in use" not in self.log_text():
                break
        raise AssertionError("nginx did not start:\n" + self.log_text())

    def restart(self) -> None:
        """Start again on the same port (a page's origin includes it)."""
        self.stop()
        if not self._launch():
            raise AssertionError("nginx did not start again:\n" + self.log_text())

    def _launch(self) -> bool:
        self.write_config()
        self.error_log.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self._wait_ready(10 * UNIT)

    def _wait_ready(self, timeout: float) -> bool:
        """Poll ``ready_path``; ``False`` if nginx exits first."""
        assert self.process is not None
        return wait_ready(
            self.process, self.port, self.ready_path, timeout, self.log_text
        )

    def pause(self) -> None:
        """Freeze master and worker: connections stay open and go silent."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown: SIGQUIT would wait for every open stream to end."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
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
