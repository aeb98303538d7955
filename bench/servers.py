"""Starting and stopping the two servers under test, and watching them.

Each server runs pinned to :data:`SERVER_CORE` (``taskset -c``) in its own
temporary directory, on a free loopback port, and is ready once its health
check answers (polled, never slept for). :func:`check_delivery` then sends
one message to one subscriber and compares what arrives, so that no
measurement starts against a server that does not deliver.

- rpushd: ``python -m rpushd serve`` with the interpreter running the
  benchmark, configured through its environment.
- nchan: nginx with the nchan module, one worker process, from a generated
  nginx.conf; installed with apt-get when missing (as root).
"""

from __future__ import annotations

import http.client
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from wire import (
    Dialect,
    ResponseReader,
    decode_message,
    encode_message,
    nchan_dialect,
    rpushd_dialect,
    split_head,
    websocket_key,
)

from rpushd import tokens

SERVER_CORE = 0
LOADGEN_CORE = 1
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NCHAN_PACKAGES = ("nginx", "libnginx-mod-nchan")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_USABLE_CORES = frozenset(os.sched_getaffinity(0))
"""The cores this process may use, read before it pins itself to one."""


class ServerError(Exception):
    """A server could not be installed, started or verified."""


# Reading /proc.


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which may itself hold spaces.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS), 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def children(pid: int) -> list[int]:
    """Direct children of process ``pid``."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def pinned(command: list[str]) -> list[str]:
    """``command`` run on :data:`SERVER_CORE`, where the machine has two."""
    if can_pin():
        return ["taskset", "-c", str(SERVER_CORE), *command]
    return command


def can_pin() -> bool:
    """Whether the server and the load generator can have a core each."""
    return {SERVER_CORE, LOADGEN_CORE} <= _USABLE_CORES and bool(
        shutil.which("taskset")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A running server.


@dataclass
class Server:
    """One server under test, running.

    ``main_pid`` is the process that was started (the daemon, or nginx's
    master); ``worker_pid`` the one that serves connections (the same for
    rpushd). Memory is ``worker RSS + growth of main`` (see rss_total).
    """

    name: str
    dialect: Dialect
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    token: Callable[[str], str]
    worker_pid: int = 0
    stopped: bool = field(default=False)

    @property
    def main_pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        return sorted({self.main_pid, self.worker_pid})

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every process of the server."""
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss(self) -> dict[int, int]:
        """Resident bytes of each process of the server."""
        return {pid: rss_bytes(pid) for pid in self.pids}

    def log_lines(self, *words: str) -> list[str]:
        """Lines of the server's log that contain one of ``words``."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if any(w in line for w in words)]

    def stop(self) -> int | None:
        """Stop the server and remove its directory; return its exit status."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode


def start_rpushd(heartbeat_secs: int = 15, transport: str = "stream") -> Server:
    """Start ``python -m rpushd serve`` pinned to the server core.

    Its subscribers will use ``transport`` (see :func:`wire.rpushd_dialect`).
    """
    secret = secrets.token_urlsafe(32)
    publish_secret = secrets.token_urlsafe(32)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rpushd-bench-"))
    log = workdir / "rpushd.log"
    env = {
        **os.environ,
        "RPUSHD_LISTEN": f"127.0.0.1:{port}",
        "RPUSHD_SECRET": secret,
        "RPUSHD_PUBLISH_SECRET": publish_secret,
        "RPUSHD_HEARTBEAT_SECS": str(heartbeat_secs),
        "RPUSHD_LOG_LEVEL": "warning",
    }
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            pinned([sys.executable, "-m", "rpushd", "serve"]),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    expires = int(time.time()) + 24 * 3600
    server = Server(
        name="ours",
        dialect=rpushd_dialect(publish_secret, transport),
        port=port,
        process=process,
        workdir=workdir,
        log=log,
        token=lambda channel: tokens.mint(channel, secret.encode(), expires),
        worker_pid=process.pid,
    )
    _wait_ready(server, "/healthz")
    return server


def start_nchan() -> Server:
    """Start nginx with nchan (one worker) pinned to the server core."""
    nginx = ensure_nchan()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="nchan-bench-"))
    config = workdir / "nginx.conf"
    log = workdir / "error.log"
    config.write_text(nchan_config(workdir, port))
    command = [nginx, "-p", f"{workdir}/", "-c", str(config), "-e", str(log)]
    process = subprocess.Popen(
        pinned(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(
        name="nchan",
        dialect=nchan_dialect(),
        port=port,
        process=process,
        workdir=workdir,
        log=log,
        token=lambda channel: "",
    )
    _wait_ready(server, "/healthz")
    deadline = time.monotonic() + READY_TIMEOUT
    while not (workers := children(process.pid)):
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError("nginx started no worker process")
        time.sleep(0.05)
    if len(workers) != 1:
        server.stop()
        raise ServerError(f"expected one nginx worker, found {len(workers)}")
    server.worker_pid = workers[0]
    return server


def nchan_config(workdir: Path, port: int) -> str:
    """nginx.conf for nchan: one worker, chunked subscribers, HTTP publishers.

    Each channel keeps its last 1,000 messages for 60 s, far more than a
    streaming subscriber ever falls behind, in shared memory large enough
    for 1,000 such channels, so no message is dropped by the buffer.
    Publishers keep their connection for the whole run.
    """
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
load_module {NCHAN_MODULE};
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
{user}
pid {workdir}/nginx.pid;
events {{
  worker_connections 19000;
  multi_accept on;
}}
http {{
  access_log off;
{temp}
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  tcp_nodelay on;
  nchan_max_reserved_memory 1024m;
  server {{
    listen 127.0.0.1:{port} backlog=16384;
    location = /healthz {{
      return 200 "ok\\n";
    }}
    location ~ ^/sub/(.+)$ {{
      nchan_subscriber http-chunked;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/pub/(.+)$ {{
      nchan_publisher http;
      nchan_channel_id $1;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 60s;
      client_body_buffer_size 16k;
      client_max_body_size 16k;
    }}
  }}
}}
"""


def ensure_nchan() -> str:
    """The nginx executable, with the nchan module installed; apt-get if not."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx and NCHAN_MODULE.exists():
        return nginx
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerError(
            "nchan is missing; install it first: apt-get install -y "
            + " ".join(NCHAN_PACKAGES)
        )
    print("installing " + " ".join(NCHAN_PACKAGES), file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *NCHAN_PACKAGES],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not nginx or not NCHAN_MODULE.exists():
        raise ServerError("apt-get ran but nginx or the nchan module is missing")
    return nginx


def _wait_ready(server: Server, path: str) -> None:
    """Poll ``path`` until it answers 200; stop the server and raise if not."""
    deadline = time.monotonic() + READY_TIMEOUT
    problem = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            problem = f"exited with status {server.process.returncode}"
            break
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError as exc:
            problem = str(exc)
        time.sleep(0.05)
    log = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
    server.stop()
    raise ServerError(f"{server.name} not ready: {problem}\n{log}")


# Checking delivery before measuring.


def check_delivery(server: Server, timeout: float = 5.0) -> None:
    """One subscriber, one publish: the exact message must arrive."""
    channel = "bench-check"
    dialect = server.dialect
    key = websocket_key() if dialect.upgrade else ""
    deadline = time.monotonic() + timeout
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout) as sub,
        socket.create_connection(("127.0.0.1", server.port), timeout) as pub,
    ):
        sub.sendall(dialect.subscribe_request(channel, server.token(channel), key))
        received = b""
        while (split := split_head(received)) is None:
            received += _receive(sub, deadline, "the stream opened")
        status, head, rest = split
        problem = dialect.head_problem(status, head, key)
        if problem:
            raise ServerError(f"{server.name} answered a subscribe: {problem}")
        decoder = dialect.decoder()
        payloads = decoder.feed(rest)
        while not decoder.ready:
            payloads += decoder.feed(_receive(sub, deadline, "the stream opened"))

        message = encode_message(0, 0, int(time.monotonic() * 1_000_000))
        pub.sendall(dialect.publish_request(channel, message))
        reader = ResponseReader()
        statuses: list[int] = []
        while not statuses:
            statuses = reader.feed(_receive(pub, deadline, "the publish answer"))
        if statuses[0] not in dialect.acked_statuses:
            raise ServerError(f"{server.name} answered a publish with {statuses[0]}")

        while not payloads:
            payloads = decoder.feed(_receive(sub, deadline, "the message"))
        if payloads[0] != message:
            raise ServerError(
                f"{server.name} delivered {payloads[0]!r}, not {message!r}"
            )
        decode_message(payloads[0])


def _receive(sock: socket.socket, deadline: float, what: str) -> bytes:
    """The next bytes ``sock`` receives before ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ServerError(f"no {what} in time")
    sock.settimeout(max(0.01, remaining))
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise ServerError(f"no {what} in time") from None
    if not data:
        raise ServerError(f"the server closed the connection before {what}")
    return data


# Versions, for the results.


def versions() -> dict[str, str]:
    """Versions of what the benchmark ran: Python, uvloop, nginx, nchan."""
    found = {"python": platform.python_version(), "uvloop": metadata.version("uvloop")}
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx:
        result = subprocess.run([nginx, "-v"], capture_output=True, text=True)
        found["nginx"] = result.stderr.strip().split("/", 1)[-1]
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-nchan"],
        capture_output=True,
        text=True,
    )
    if result.returncode == 0:
        found["nchan"] = result.stdout.strip()
    return found
