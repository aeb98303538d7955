"""Running the daemon: listen, drive the timers, reload, stop cleanly.

Shutdown goes in stages (on SIGTERM or SIGINT): tell systemd, stop
accepting, close idle keep-alive connections, give requests already being
received a bounded grace period (a publish in flight still reaches its
subscribers), then end the streams. Streams are ended in batches over at
most ``RPUSHD_DRAIN_SECS`` rather than all at once, each told in its own
terms to reconnect, so that thousands of clients do not come back in one
burst.

SIGHUP re-reads the ``--env-file`` and applies new secrets and tunables
without dropping a stream; a file that does not load is refused with a log
line and the running configuration kept. The listen address and the log
format stay as they were until a restart, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from rpushd import config as configuration
from rpushd.config import Config, format_address, loopback_if_wildcard
from rpushd.connection import HttpConnection
from rpushd.endpoints import Endpoints
from rpushd.errors import ConfigError
from rpushd.heartbeats import TICKS_PER_SECOND
from rpushd.http11 import Response
from rpushd.hub import Hub
from rpushd.systemd import Notifier

logger = logging.getLogger("rpushd.server")

LISTEN_BACKLOG = 16384
MAX_SWEEP_INTERVAL_SECS = 300
CLOSE_WAIT_SECS = 2.0
DRAIN_STEPS_PER_SECOND = 10
# How often connection deadlines (request, keep-alive, linger) are checked.
DEADLINE_CHECK_SECS = 0.2
# File descriptors kept back from RPUSHD_MAX_CONNECTIONS's default, for the
# listening socket, logs and the odd file.
SPARE_FILES = 64
# A process listening on this host answers a connect at once; waiting
# longer only delays the start behind a firewall that drops.
LISTEN_PROBE_SECS = 0.5


class Server:
    """One daemon: a listening socket, a hub and its timers."""

    def __init__(
        self,
        config: Config,
        notifier: Notifier | None = None,
        files: Mapping[str, Response] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.hub = Hub(config, self._loop)
        self.hub.max_connections = config.max_connections or _connection_limit()
        self._endpoints = Endpoints(self.hub, files)
        self._notifier = notifier or Notifier({})
        self._server: asyncio.Server | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.address = ""

    @property
    def config(self) -> Config:
        return self.hub.config

    async def start(self) -> None:
        """Bind and start serving; raises OSError if the address is taken."""
        # Asked before binding: once bound, the probe would reach ourselves.
        shared = self.config.port != 0 and await _accepts_connections(
            loopback_if_wildcard(self.config.host), self.config.port
        )
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
        if shared:
            # SO_REUSEPORT is part of the contract (PROTOCOL.md), so the
            # bind succeeds however the other process came to be there.
            logger.warning(
                "another process already listens on %s, and the kernel will "
                "share new connections between it and this daemon: right for "
                "a zero-downtime restart, otherwise stop one of them, or "
                "clients will reach either at random",
                self.address,
            )

        self._every("heartbeat", 1 / TICKS_PER_SECOND, self.hub.heartbeat_tick)
        self._every(
            "deadlines",
            DEADLINE_CHECK_SECS,
            lambda: self.hub.check_deadlines(self._loop.time()),
        )
        self._every("sweep", self._sweep_interval(), self.hub.sweep)

        notifier = self._notifier
        notifier.notify("READY=1", f"STATUS=listening on {self.address}")
        if notifier.watchdog_interval is not None:
            # Kept alive by the event loop itself: a stuck loop stops it.
            watchdog = notifier.watchdog_interval
            self._every("watchdog", watchdog, lambda: notifier.notify("WATCHDOG=1"))

    def reload(self, environ: Mapping[str, str]) -> bool:
        """Apply settings from ``environ``; keep the old ones if they fail."""
        try:
            new = configuration.load(environ)
        except ConfigError as exc:
            logger.error("reload refused, configuration kept: %s", exc)
            return False

        for warning in configuration.warnings(new):
            logger.warning("%s", warning)
        new = self._kept_until_restart(new)
        # 0 means the default limit, as at start, not "keep the last one".
        limit = new.max_connections or _connection_limit()
        if new.enforce_token_expiry and not self.config.enforce_token_expiry:
            logger.info(
                "RPUSHD_ENFORCE_TOKEN_EXPIRY applies to streams opened from now on"
            )

        sweep_interval = self._sweep_interval()
        self.hub.apply(replace(new, max_connections=limit))
        logging.getLogger().setLevel(configuration.logging_level(new))
        if self._sweep_interval() != sweep_interval and self._serving():
            self._timers["sweep"].cancel()
            self._every("sweep", self._sweep_interval(), self.hub.sweep)
        logger.info("configuration reloaded")
        return True

    def _kept_until_restart(self, new: Config) -> Config:
        """``new``, but with what only a restart can change kept, and logged."""
        old = self.config
        if (new.host, new.port) != (old.host, old.port):
            logger.warning(
                "RPUSHD_LISTEN changes only with a restart; kept %s", self.address
            )
        if new.log_format != old.log_format:
            logger.warning(
                "RPUSHD_LOG_FORMAT changes only with a restart; kept %s",
                old.log_format,
            )
        return self.hub.effective(new)

    def _sweep_interval(self) -> int:
        # Often enough that a channel goes about when its TTL says, and at
        # least every few minutes whatever the TTL.
        ttl = self.config.channel_idle_ttl_secs
        return min(MAX_SWEEP_INTERVAL_SECS, max(1, ttl))

    def _serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def stop(self) -> None:
        """Stop in stages; returns once every connection is closed."""
        logger.info("shutting down")
        self._notifier.notify("STOPPING=1", "STATUS=draining")
        for name in ("heartbeat", "sweep"):
            self._timers[name].cancel()
        if self._server is not None:
            self._server.close()

        connections = self.hub.connections
        for connection in list(connections):
            connection.shutdown()
        await self._wait_until(
            lambda: not any(c.receiving_request for c in connections),
            self.config.shutdown_grace_secs,
        )
        for connection in list(connections):
            connection.refuse_unfinished()
            connection.shutdown()

        await self._drain_streams()
        await self._wait_until(lambda: not connections, CLOSE_WAIT_SECS)
        for connection in list(connections):
            connection.abort()
        for timer in self._timers.values():
            timer.cancel()
        logger.info("stopped")

    async def _drain_streams(self) -> None:
        """End the streams in even batches over at most RPUSHD_DRAIN_SECS.

        A batch goes every tenth of a second, so a few streams end sooner
        than that: they need fewer batches than there are tenths.
        """
        streams = list(self.hub.streams)
        steps = max(1, self.config.drain_secs * DRAIN_STEPS_PER_SECOND)
        batch = max(1, math.ceil(len(streams) / steps))
        batches = math.ceil(len(streams) / batch)
        if batches == 1:
            logger.info("ending %d streams at once", len(streams))
        elif batches > 1:
            logger.info(
                "ending %d streams over %.1f s, %d every %.1f s "
                "(RPUSHD_DRAIN_SECS=%d is the most a drain takes)",
                len(streams),
                (batches - 1) / DRAIN_STEPS_PER_SECOND,
                batch,
                1 / DRAIN_STEPS_PER_SECOND,
                self.config.drain_secs,
            )

        for start in range(0, len(streams), batch):
            if start:
                await asyncio.sleep(1 / DRAIN_STEPS_PER_SECOND)
            self.hub.finish_streams(streams[start : start + batch])

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


def raise_file_limit() -> int:
    """Lift the soft limit on open files to the hard one; return it.

    Every subscriber is an open socket, and distributions start services
    with a low soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def _accepts_connections(host: str, port: int) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), LISTEN_PROBE_SECS
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _connection_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, soft - SPARE_FILES)


async def serve(
    config: Config,
    ready: Callable[[Server], None] | None = None,
    reload_environ: Callable[[], Mapping[str, str]] | None = None,
    files: Mapping[str, Response] | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit status.

    ``reload_environ`` gives the settings to apply on SIGHUP; without it,
    SIGHUP is logged and ignored. ``files`` are fixed answers by path (the
    dev demo page).
    """
    loop = asyncio.get_running_loop()
    server = Server(config, Notifier(os.environ), files)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, _on_hangup, server, reload_environ)

    for warning in configuration.warnings(config):
        logger.warning("%s", warning)
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


def _on_hangup(
    server: Server, reload_environ: Callable[[], Mapping[str, str]] | None
) -> None:
    if reload_environ is None:
        logger.warning("SIGHUP ignored: the daemon was not started with --env-file")
        return
    try:
        environ = reload_environ()
    except ConfigError as exc:
        logger.error("reload refused, configuration kept: %s", exc)
        return
    server.reload(environ)
