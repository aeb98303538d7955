"""Published messages with their ids, and the wires that carry them.

A :class:`Delivery` is one published message. A :class:`Wire` is one way a
stream puts items on the wire (length-prefixed frames, Server-Sent Events,
WebSocket; chunked or not). A delivery encodes itself for a wire the first
time a subscriber of that kind needs it and keeps the bytes, so a message
is encoded once per kind of stream, never once per subscriber.

Ids are ``EPOCH-SEQ`` (docs/STREAMS.md): a random epoch per daemon run and
one sequence shared by every channel of that run.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import orjson

# SEQ 0 is the position of a daemon that has published nothing yet.
_ID = re.compile(r"([0-9a-f]{8})-(0|[1-9][0-9]{0,18})")


def new_epoch() -> str:
    """A fresh epoch: 8 random lowercase hex digits."""
    return secrets.token_hex(4)


def parse_id(text: str) -> tuple[str, int] | None:
    """Split an ``EPOCH-SEQ`` id, or return ``None`` if it is malformed."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, eq=False)
class Wire:
    """How one kind of stream encodes what it carries.

    ``message`` encodes a delivery; ``control`` encodes a hello, gap or
    close envelope given its type, its bytes and an optional id.
    ``heartbeat`` keeps the stream alive. The endings: ``goodbye`` when the
    daemon stops, ``expired`` when the subscriber's token ran out (with
    ``RPUSHD_ENFORCE_TOKEN_EXPIRY``), ``overflow`` when the client fell
    behind (``None``: nothing can be said, the connection is just dropped).
    """

    name: str
    message: Callable[[Delivery], bytes]
    control: Callable[[str, bytes, str | None], bytes]
    heartbeat: bytes
    goodbye: bytes
    expired: bytes
    overflow: bytes | None


class Delivery:
    """One published message: its id, channel, payload and encodings."""

    __slots__ = (
        "seq",
        "id",
        "channel",
        "payload",
        "published_at",
        "held_bytes",
        "_encoded",
    )

    def __init__(
        self, epoch: str, seq: int, channel: str, payload: bytes, published_at: float
    ) -> None:
        self.seq = seq
        self.id = f"{epoch}-{seq}"
        self.channel = channel
        self.payload = payload
        self.published_at = published_at
        self.held_bytes = 0
        self._encoded: dict[Wire, bytes] = {}

    def encoded(self, wire: Wire) -> bytes:
        """These bytes for ``wire``, computed on first use."""
        try:
            return self._encoded[wire]
        except KeyError:
            data = self._encoded[wire] = wire.message(self)
            return data

    def envelope(self) -> bytes:
        """The ``message`` envelope; the payload is spliced in, not re-encoded."""
        return b'{"type":"message","id":"%s","channel":"%s","message":%s}' % (
            self.id.encode(),
            self.channel.encode(),
            self.payload,
        )

    def footprint(self) -> int:
        """Bytes held by this delivery and its encodings, roughly."""
        return len(self.payload) + sum(len(data) for data in self._encoded.values())


def hello_envelope(
    heartbeat_secs: int, epoch: str, last_id: str, replay: int = 0
) -> bytes:
    """The first item of every envelope stream.

    ``replay`` counts the gap and message items that follow it before the
    stream is live; ``last_id`` is the position once they have been sent.
    """
    return orjson.dumps(
        {
            "type": "hello",
            "heartbeat_secs": heartbeat_secs,
            "epoch": epoch,
            "last_id": last_id,
            "replay": replay,
        }
    )


def gap_envelope(channel: str, reason: str) -> bytes:
    """Messages of ``channel`` may have been missed."""
    return orjson.dumps({"type": "gap", "channel": channel, "reason": reason})


def close_envelope(reason: str) -> bytes:
    """The daemon is about to close the stream."""
    return orjson.dumps({"type": "close", "reason": reason})
