"""The daemon's shared state: channels, history, open streams, counters.

Endpoints call into the hub to publish and to open streams; the server's
timers call it for heartbeats, history expiry and the idle-channel sweep.
Everything here runs on the event loop thread and never awaits, which is
what makes a resume exact: the replay and the switch to live happen in one
step that no publish can fall between.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from rpushd import REPOSITORY_URL, __version__
from rpushd.channels import ChannelRegistry
from rpushd.config import Config
from rpushd.deadlines import Deadlines
from rpushd.deliveries import Delivery, Wire, gap_envelope, hello_envelope, new_epoch
from rpushd.heartbeats import TICKS_PER_SECOND, HeartbeatWheel
from rpushd.history import History
from rpushd.metrics import Metrics
from rpushd.stats import (
    ChannelFigures,
    Counters,
    Snapshot,
    read_rss_bytes,
    sort_channels,
)
from rpushd.streams import Outbox, Stream

if TYPE_CHECKING:
    from rpushd.connection import HttpConnection

logger = logging.getLogger("rpushd.channels")


class Hub:
    """Channels, streams and counters of one running daemon."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.epoch = new_epoch()
        self.position = 0
        self.channels = ChannelRegistry(position=lambda: self.position)
        self.history = History(
            config.history_size, config.history_ttl_secs, config.history_max_bytes
        )
        self.counters = Counters()
        self.streams: set[Stream] = set()
        self.connections: set[HttpConnection] = set()
        self.deadlines: Deadlines[HttpConnection] = Deadlines()
        self.outbox = Outbox(loop)
        self.heartbeats: HeartbeatWheel[Stream] = HeartbeatWheel(config.heartbeat_secs)
        self.metrics = Metrics(lambda: self.snapshot(verbose=False))
        self.max_connections = config.max_connections
        self.started_at = int(time.time())
        self._started = time.monotonic()
        self._ticks = 0
        # (expires_at, tiebreak, stream): checked once a second, one heap
        # for all streams, and only filled with RPUSHD_ENFORCE_TOKEN_EXPIRY.
        self._expiries: list[tuple[int, int, Stream]] = []
        self._tiebreak = itertools.count()

    # Publishing and subscribing.

    def publish(self, channel: str, payload: bytes) -> Delivery:
        """Send ``payload`` to every subscriber of ``channel`` and hold it."""
        self.counters.publish_requests_total += 1
        self.counters.published_bytes_total += len(payload)

        # A channel this publish creates counts as having lost what came
        # before, not this message itself: look it up before numbering.
        target = self.channels.get(channel)
        self.position += 1
        delivery = Delivery(
            self.epoch, self.position, channel, payload, time.monotonic()
        )

        started = time.perf_counter()
        self.channels.publish(delivery, target)
        self.metrics.fanout_seconds.observe(time.perf_counter() - started)

        self.history.record(target, delivery)
        return delivery

    def open_stream(
        self,
        transport: asyncio.WriteTransport,
        names: Sequence[str],
        wire: Wire,
        head: bytes,
        *,
        envelope: bool,
        last_id: str | None,
        peer: str,
        expires_at: int | None = None,
    ) -> Stream:
        """Answer a subscribe request and add its stream to its channels.

        ``head`` (the response head) goes out at once with the opening: the
        first heartbeat of an original stream, or the hello envelope, any
        gaps and the replay of an envelope stream. The stream joins its
        channels in the same step, so nothing published is missed or sent
        twice.
        """
        stream = Stream(
            transport,
            wire,
            outbox=self.outbox,
            limit=self.config.max_pending_bytes,
            on_overflow=self._stream_overflowed,
            peer=peer,
        )
        stream.channels = [self.channels.get(name) for name in names]

        if envelope:
            opening = head + self._envelope_opening(stream, last_id)
        else:
            opening = head + wire.heartbeat
        transport.write(opening)

        for channel in stream.channels:
            self.channels.subscribe(channel, stream)
        self.streams.add(stream)
        self.heartbeats.add(stream)
        self.counters.stream_connections_total += 1
        if expires_at is not None and self.config.enforce_token_expiry:
            entry = (expires_at, next(self._tiebreak), stream)
            heapq.heappush(self._expiries, entry)
        return stream

    def close_stream(self, stream: Stream) -> None:
        """Forget a stream whose connection has gone."""
        stream.detach()
        if stream in self.streams:
            self.streams.discard(stream)
            self.heartbeats.remove(stream)
            for channel in stream.channels:
                self.channels.unsubscribe(channel, stream)

    def _envelope_opening(self, stream: Stream, last_id: str | None) -> bytes:
        """The hello, then any gaps and the replay, as one block of bytes."""
        wire = stream.wire
        gaps: list[bytes] = []
        owed: list[Delivery] = []
        if last_id is not None:
            for channel in stream.channels:
                reason, held = self.history.replay(
                    channel, last_id, self.epoch, self.position
                )
                if reason is not None:
                    gaps.append(gap_envelope(channel.name, reason))
                owed.extend(held)
        owed.sort(key=lambda delivery: delivery.seq)

        position = f"{self.epoch}-{self.position}"
        hello = hello_envelope(
            self.config.heartbeat_secs, self.epoch, position, len(gaps) + len(owed)
        )
        # An item's id is a position to resume from, and an EventSource
        # adopts it as soon as the item arrives. Only the opening's last
        # item may therefore carry the new position (replayed messages
        # carry their own ids): a connection cut during the replay resumes
        # from what actually arrived, and is told of its gaps again.
        ids: list[str | None] = [None] * (1 + len(gaps))
        if not owed:
            ids[-1] = position
        parts = [wire.control("hello", hello, ids[0])]
        parts.extend(
            wire.control("gap", gap, gap_id)
            for gap, gap_id in zip(gaps, ids[1:], strict=True)
        )
        parts.extend(delivery.encoded(wire) for delivery in owed)
        self.history.account(owed)
        return b"".join(parts)

    # Timers.

    def heartbeat_tick(self) -> None:
        """Send heartbeats to the streams that are due one (see heartbeats)."""
        for stream in self.heartbeats.tick():
            stream.heartbeat()

        # Heartbeats count as use of a channel, and history ages; once a
        # second is precise enough for both.
        self._ticks += 1
        if self._ticks % TICKS_PER_SECOND == 0:
            self.channels.touch_active()
            self.history.expire()
            self._end_expired_streams(int(time.time()))

    def _end_expired_streams(self, now: int) -> None:
        # A token is valid while exp >= now (PROTOCOL.md), so it has run
        # out once exp < now.
        expiries = self._expiries
        while expiries and expiries[0][0] < now:
            _, _, stream = heapq.heappop(expiries)
            if stream in self.streams:
                stream.finish(stream.wire.expired)

    def check_deadlines(self, now: float) -> None:
        """Wake the connections whose request or idle deadline has passed."""
        for connection in self.deadlines.passed(now):
            connection.deadline_passed()

    def sweep(self) -> None:
        """Forget channels that have been idle and empty for the TTL."""
        dropped = self.channels.sweep(self.config.channel_idle_ttl_secs)
        for channel in dropped:
            self.history.forget(channel)
        if dropped:
            logger.info("dropped %d idle channels", len(dropped))

    def finish_streams(self, streams: Sequence[Stream]) -> None:
        """End ``streams`` properly: the daemon is stopping."""
        self.outbox.flush()
        for stream in streams:
            stream.finish(stream.wire.goodbye)

    # Configuration.

    def apply(self, config: Config) -> None:
        """Take new settings without dropping a stream (SIGHUP)."""
        old, self.config = self.config, config
        self.max_connections = config.max_connections or self.max_connections

        history = self.history
        history.size = config.history_size
        history.ttl = config.history_ttl_secs
        history.max_bytes = config.history_max_bytes
        history.expire()

        if config.max_pending_bytes != old.max_pending_bytes:
            for stream in self.streams:
                stream.limit = config.max_pending_bytes
        if config.heartbeat_secs != old.heartbeat_secs:
            self.heartbeats = HeartbeatWheel(config.heartbeat_secs)
            for stream in self.streams:
                self.heartbeats.add(stream)
        if not config.enforce_token_expiry:
            self._expiries.clear()

    def effective(self, config: Config) -> Config:
        """``config`` with the settings that only a restart can change kept."""
        # The log handler is installed once, before the first line is logged.
        return replace(
            config,
            host=self.config.host,
            port=self.config.port,
            log_format=self.config.log_format,
        )

    # Statistics.

    def snapshot(self, *, verbose: bool) -> Snapshot:
        """Every statistics figure as of now."""
        registry = self.channels
        channels = [
            ChannelFigures(c.name, len(c.subscribers), registry.idle_seconds(c))
            for c in registry
        ]
        figures: dict[str, int | str | None] = {
            "version": __version__,
            "repository_url": REPOSITORY_URL,
            "started_at": self.started_at,
            "uptime_seconds": int(time.monotonic() - self._started),
            "active_channels": sum(1 for c in channels if c.subscribers),
            "retained_channels": len(channels),
            "active_stream_connections": len(self.streams),
            "active_subscribers": registry.subscriber_count,
            "memory_rss_bytes": read_rss_bytes(),
            "history_bytes": self.history.bytes,
            "open_connections": len(self.connections),
        }
        for name in self.counters.__slots__:
            figures[name] = getattr(self.counters, name)

        listed = sort_channels(channels) if verbose else []
        return Snapshot(figures, listed, verbose)

    def _stream_overflowed(self, stream: Stream) -> None:
        # Gone as a subscriber now, even while its goodbye drains.
        self.counters.slow_subscriber_disconnects_total += 1
        self.close_stream(stream)
