"""Running the daemon: listen, drive the timers, stop cleanly.

Shutdown goes in stages (on SIGTERM or SIGINT): stop accepting; close idle
keep-alive connections; give requests already being received a bounded
grace period to finish (a publish in flight still reaches its subscribers);
then write out what every stream is owed, end each body properly and close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable

from rpushd.config import Config, format_address
from rpushd.connection import HttpConnection
from rpushd.endpoints import Endpoints
from rpushd.heartbeats import TICKS_PER_SECOND
from rpushd.hub import Hub

logger = logging.getLogger("rpushd.server")

LISTEN_BACKLOG = 16384
MAX_SWEEP_INTERVAL_SECS = 300
CLOSE_WAIT_SECS = 2.0


class Server:
    """One daemon: a listening socket, a hub and its timers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self.hub = Hub(config, self._loop)
        self._endpoints = Endpoints(self.hub)
        self._server: asyncio.Server | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.address = ""

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the address is taken."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        self._server = await self._loop.create_server(
            lambda: HttpConnection(self.hub, self._endpoints),
            self.config.host,
            self.config.port,
            family=family,
            reuse_address=True,
            reuse_port=True,
            backlog=LISTEN_BACKLOG,
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = format_address(host, port)
        logger.info("listening on %s", self.address)

        self._every("heartbeat", 1 / TICKS_PER_SECOND, self.hub.heartbeat_tick)
        sweep_every = min(
            MAX_SWEEP_INTERVAL_SECS, max(1, self.config.channel_idle_ttl_secs)
        )
        self._every("sweep", sweep_every, self.hub.sweep)

    async def stop(self) -> None:
        """Stop in stages; returns once every connection is closed."""
        logger.info("shutting down")
        for timer in self._timers.values():
            timer.cancel()
        if self._server is not None:
            self._server.close()

        connections = self.hub.connections
        for connection in list(connections):
            connection.shutdown()
        await self._wait_until(
            lambda: not any(c.receiving_request for c in connections),
            self.config.shutdown_grace_secs,
        )

        self.hub.finish_streams()
        for connection in list(connections):
            connection.refuse_unfinished()
            connection.shutdown()
        await self._wait_until(lambda: not connections, CLOSE_WAIT_SECS)
        for connection in list(connections):
            connection.abort()
        logger.info("stopped")

    def _every(self, name: str, interval: float, action: Callable[[], None]) -> None:
        """Run ``action`` every ``interval`` seconds, without drifting."""
        start = self._loop.time()

        def tick(count: int) -> None:
            try:
                action()
            except Exception:
                logger.exception("timer action failed")
            schedule(count + 1)

        def schedule(count: int) -> None:
            when = start + interval * count
            self._timers[name] = self._loop.call_at(when, tick, count)

        schedule(1)

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


async def serve(config: Config, ready: Callable[[Server], None] | None = None) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit status."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    server = Server(config)
    try:
        await server.start()
    except OSError as exc:
        logger.error("cannot listen on %s: %s", config.listen, exc.strerror or exc)
        return 1
    if ready is not None:
        ready(server)

    await stopping.wait()
    await server.stop()
    return 0
