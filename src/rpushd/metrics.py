"""Prometheus metrics at ``GET /metrics`` (privileged like stats).

Built with ``prometheus-client`` on a registry of our own. Every figure of
``/api/stats`` is read from the hub at scrape time, so the hot path keeps
plain integer counters; the histograms and the refusal counter are the
only things updated as work happens, once per publish or per refusal,
never per subscriber.

Each family name appears once, as the text format requires: refused
subscriptions are only the counter labelled by reason, whose sum is the
``refused_subscriptions_total`` figure of ``/api/stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rpushd import tokens
from rpushd.stats import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Figures that only grow are counters; Prometheus adds the _total suffix.
_COUNTERS = (
    "stream_connections_total",
    "publish_requests_total",
    "published_bytes_total",
    "auth_failures_total",
    "slow_subscriber_disconnects_total",
    "refused_connections_total",
)
_GAUGES = (
    "uptime_seconds",
    "active_channels",
    "retained_channels",
    "active_stream_connections",
    "active_subscribers",
    "memory_rss_bytes",
    "history_bytes",
    "open_connections",
    "started_at",
)

# Publishing and fanning out take microseconds to a few milliseconds.
_SECONDS_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
)  # fmt: skip


class _StatsCollector(Collector):
    """The stats figures, read when Prometheus scrapes."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        figures = self._snapshot().figures
        for name in _COUNTERS:
            value = figures[name]
            help_text = name.removesuffix("_total").replace("_", " ")
            counter = CounterMetricFamily(f"rpushd_{name}", help_text)
            counter.add_metric([], float(value or 0))
            yield counter
        for name in _GAUGES:
            value = figures[name]
            if value is None:
                continue
            gauge = GaugeMetricFamily(f"rpushd_{name}", name.replace("_", " "))
            gauge.add_metric([], float(value))
            yield gauge


class Metrics:
    """The daemon's Prometheus registry and the instruments it updates."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(snapshot))
        self.fanout_seconds = Histogram(
            "rpushd_fanout_seconds",
            "time to hand one published message to every subscriber",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "rpushd_publish_seconds",
            "time to answer one publish request, from complete request to answer",
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.refused_subscriptions = Counter(
            "rpushd_refused_subscriptions",
            "subscribe requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        # A labelled counter shows no sample until its first increment; a
        # zero for every reason lets rate() and sum() answer from the start.
        for reason in tokens.REASONS:
            self.refused_subscriptions.labels(reason)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
