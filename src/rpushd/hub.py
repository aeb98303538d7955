"""The daemon's shared state: channels, open streams and counters.

Endpoints call into the hub to publish and to open streams; the server's
timers call it for heartbeats and the idle-channel sweep. Everything here
runs on the event loop thread and never awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from rpushd import REPOSITORY_URL, __version__
from rpushd.channels import ChannelRegistry
from rpushd.config import Config
from rpushd.frames import HEARTBEAT, Frame
from rpushd.heartbeats import TICKS_PER_SECOND, HeartbeatWheel
from rpushd.http11 import stream_head
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
        self.channels = ChannelRegistry()
        self.counters = Counters()
        self.streams: set[Stream] = set()
        self.connections: set[HttpConnection] = set()
        self.outbox = Outbox(loop)
        self.heartbeats: HeartbeatWheel[Stream] = HeartbeatWheel(config.heartbeat_secs)
        self._ticks = 0
        self.started_at = int(time.time())
        self._started = time.monotonic()

    # Publishing and subscribing.

    def publish(self, channel: str, payload: bytes) -> int:
        """Send ``payload`` to every subscriber of ``channel``; return how many."""
        self.counters.publish_requests_total += 1
        self.counters.published_bytes_total += len(payload)
        return self.channels.publish(channel, Frame(payload))

    def open_stream(
        self,
        transport: asyncio.WriteTransport,
        channel: str,
        *,
        chunked: bool,
        peer: str,
    ) -> Stream:
        """Answer a subscribe request and add its stream to ``channel``.

        The response head and the first heartbeat go out in one write, at
        once, so the client knows the stream is live.
        """
        stream = Stream(
            transport,
            self.channels.get(channel),
            chunked=chunked,
            outbox=self.outbox,
            limit=self.config.max_pending_bytes,
            on_overflow=self._stream_overflowed,
            peer=peer,
        )
        self.channels.subscribe(stream.channel, stream)
        self.streams.add(stream)
        self.heartbeats.add(stream)
        self.counters.stream_connections_total += 1
        heartbeat = HEARTBEAT.chunked if chunked else HEARTBEAT.bare
        transport.write(stream_head(chunked=chunked) + heartbeat)
        return stream

    def close_stream(self, stream: Stream) -> None:
        """Forget a stream whose connection has gone."""
        stream.detach()
        if stream in self.streams:
            self.streams.discard(stream)
            self.heartbeats.remove(stream)
            self.channels.unsubscribe(stream.channel, stream)

    # Timers.

    def heartbeat_tick(self) -> None:
        """Send heartbeats to the streams that are due one (see heartbeats)."""
        for stream in self.heartbeats.tick():
            stream.deliver(HEARTBEAT)

        # Heartbeats count as use of a channel; once a second is precise
        # enough for an idle TTL counted in whole seconds.
        self._ticks += 1
        if self._ticks % TICKS_PER_SECOND == 0:
            self.channels.touch_active()

    def sweep(self) -> None:
        """Forget channels that have been idle and empty for the TTL."""
        dropped = self.channels.sweep(self.config.channel_idle_ttl_secs)
        if dropped:
            logger.info("dropped %d idle channels", len(dropped))

    def finish_streams(self) -> None:
        """End every stream's body properly (the daemon is stopping)."""
        self.outbox.flush()
        for stream in list(self.streams):
            stream.finish()

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
        }
        for name in self.counters.__slots__:
            figures[name] = getattr(self.counters, name)

        listed = sort_channels(channels) if verbose else []
        return Snapshot(figures, listed, verbose)

    def _stream_overflowed(self, stream: Stream) -> None:
        self.counters.slow_subscriber_disconnects_total += 1
