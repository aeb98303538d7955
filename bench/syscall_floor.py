"""The kernel's price of one small write to a loopback TCP socket.

Every delivery and every heartbeat ends in one ``write`` on a subscriber's
socket. On loopback that system call also runs the receiving side's TCP
processing, so it costs far more than the copy. This script measures that
floor with no server at all: it accepts N connections from a child process
that reads them, writes a frame to each in turn for a few seconds, and
reports the CPU time each write cost this process. Any push server, ours
or nchan, pays at least this per delivery.

    python bench/syscall_floor.py [--streams 10000] [--bytes 106] [--seconds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import select
import socket
import time

WRITER_CORE = 0
READER_CORE = 1


def _reader(port: int, count: int, ready: multiprocessing.Event) -> None:
    """Open ``count`` connections and drain them, like idle subscribers."""
    # On the other core, as the load generator: the writer's core then does
    # only the writer's work (and the kernel's receive side, as in a run).
    os.sched_setaffinity(0, {READER_CORE})
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    poller = select.epoll()
    sockets = {}
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sockets[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN)
    ready.set()
    while True:
        for fd, _ in poller.poll(1.0):
            try:
                if not sockets[fd].recv(1 << 16):
                    return
            except BlockingIOError:
                pass


def measure(streams: int, size: int, seconds: float) -> tuple[float, int]:
    """CPU microseconds per write, and how many writes were made."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    listener = socket.create_server(("127.0.0.1", 0), backlog=streams)
    port = listener.getsockname()[1]
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=_reader, args=(port, streams, ready))
    child.start()

    accepted = []
    for _ in range(streams):
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        accepted.append(sock)
    ready.wait()

    frame = b"x" * size
    writes = 0
    cpu_start = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in accepted:
            sock.send(frame)
        writes += len(accepted)
    cpu = time.process_time() - cpu_start

    for sock in accepted:
        sock.close()
    child.join(5)
    return cpu / writes * 1e6, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--bytes", type=int, default=106)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    os.sched_setaffinity(0, {WRITER_CORE})
    per_write, writes = measure(args.streams, args.bytes, args.seconds)
    print(
        f"{args.streams} streams, {args.bytes}-byte writes: {writes} writes, "
        f"{per_write:.2f} us CPU per write "
        f"(one core: at most {1e6 / per_write:,.0f} writes/s)"
    )


if __name__ == "__main__":
    main()
