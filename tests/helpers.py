"""Shared test tools: a real daemon in a subprocess, and raw HTTP clients.

Every wait in the tests is a multiple of ``UNIT`` seconds, which the
environment variable ``RPUSHD_TEST_TIMEOUT_UNIT`` scales on slow machines.
Readiness is awaited by watching for what the daemon prints or sends,
never by sleeping.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
        line = self.wait_for_log("listening on", 10 * UNIT)
        address = line.rsplit("listening on ", 1)[1].strip()
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
        return self.start()

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
    _buffer: bytearray = field(default_factory=bytearray)
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
    ) -> Stream:
        """Subscribe on ``127.0.0.1:port`` and read the response head.

        ``path_prefix`` goes before ``/api/stream/``, for a daemon reached
        through a reverse proxy; ``headers`` are added to the request.
        """
        body = json.dumps({"token": token}).encode()
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
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                raise TimeoutError("no frame arrived")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no frame arrived") from None
            if not data:
                self.ended = True
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
        if not self.chunked:
            self._frames += self._decoder.feed(data)
            return
        self._buffer += data
        while True:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self._buffer[:line_end], 16)
            if size == 0:
                return
            end = line_end + 2 + size + 2
            if len(self._buffer) < end:
                return
            chunk = bytes(self._buffer[line_end + 2 : end - 2])
            del self._buffer[:end]
            self._frames += self._decoder.feed(chunk)

    def close(self) -> None:
        self.sock.close()
