"""Statistics figures and their three renderings (PROTOCOL.md, "GET /api/stats").

:class:`Counters` is what the daemon increments; :func:`snapshot` freezes the
figures at one moment; the ``render_*`` functions turn a snapshot into the
exact text, JSON and XML bodies of the contract. Rendering is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import orjson

TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "application/xml; charset=utf-8"

# The contract's figures, in its order: (snake_case key, camelCase element).
# Figures of ours that the contract does not list come after them.
FIGURES = (
    ("version", "version"),
    ("repository_url", "repositoryUrl"),
    ("started_at", "startedAt"),
    ("uptime_seconds", "uptimeSeconds"),
    ("active_channels", "activeChannels"),
    ("retained_channels", "retainedChannels"),
    ("active_stream_connections", "activeStreamConnections"),
    ("active_subscribers", "activeSubscribers"),
    ("stream_connections_total", "streamConnectionsTotal"),
    ("publish_requests_total", "publishRequestsTotal"),
    ("published_bytes_total", "publishedBytesTotal"),
    ("auth_failures_total", "authFailuresTotal"),
    ("memory_rss_bytes", "memoryRssBytes"),
    ("slow_subscriber_disconnects_total", "slowSubscriberDisconnectsTotal"),
    ("refused_subscriptions_total", "refusedSubscriptionsTotal"),
    ("refused_connections_total", "refusedConnectionsTotal"),
    ("history_bytes", "historyBytes"),
    ("open_connections", "openConnections"),
)


@dataclass(slots=True)
class Counters:
    """Totals that only grow while the daemon runs."""

    stream_connections_total: int = 0
    publish_requests_total: int = 0
    published_bytes_total: int = 0
    auth_failures_total: int = 0
    slow_subscriber_disconnects_total: int = 0
    refused_subscriptions_total: int = 0
    refused_connections_total: int = 0


@dataclass(frozen=True, slots=True)
class ChannelFigures:
    """One line of the verbose channel listing."""

    name: str
    subscribers: int
    idle_seconds: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every figure at one moment; ``None`` memory means unknown."""

    figures: dict[str, int | str | None]
    channels: list[ChannelFigures] = field(default_factory=list)
    verbose: bool = False


def sort_channels(channels: list[ChannelFigures]) -> list[ChannelFigures]:
    """Most subscribers first, then by name."""
    return sorted(channels, key=lambda c: (-c.subscribers, c.name))


def read_rss_bytes(status_path: str = "/proc/self/status") -> int | None:
    """The process's resident set size from ``VmRSS``, or ``None``."""
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def render_text(snapshot: Snapshot) -> bytes:
    """The ``text/plain`` body."""
    lines = ["rpushd stats"]
    for key, _ in FIGURES:
        value = snapshot.figures[key]
        label = "repository" if key == "repository_url" else key
        lines.append(f"{label}: {'unknown' if value is None else value}")

    if not snapshot.verbose:
        lines.append("channels: hidden (use ?verbose=1 to include channel details)")
    else:
        lines.append("channels:")
        lines.extend(
            f"- {c.name} | subscribers={c.subscribers} | idle_seconds={c.idle_seconds}"
            for c in snapshot.channels
        )
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_json(snapshot: Snapshot) -> bytes:
    """The ``application/json`` body."""
    document: dict[str, object] = {key: snapshot.figures[key] for key, _ in FIGURES}
    document["channels"] = [
        {"name": c.name, "subscribers": c.subscribers, "idle_seconds": c.idle_seconds}
        for c in snapshot.channels
    ]
    return orjson.dumps(document)


def render_xml(snapshot: Snapshot) -> bytes:
    """The ``application/xml`` body."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<stats>"]
    for key, element in FIGURES:
        value = snapshot.figures[key]
        text = "" if value is None else escape(str(value))
        lines.append(f"  <{element}>{text}</{element}>")

    lines.append("  <channels>")
    for c in snapshot.channels:
        lines.append(
            f"    <channel><name>{escape(c.name)}</name>"
            f"<subscribers>{c.subscribers}</subscribers>"
            f"<idleSeconds>{c.idle_seconds}</idleSeconds></channel>"
        )
    lines.append("  </channels>")
    lines.append("</stats>")
    return ("\n".join(lines) + "\n").encode("utf-8")
