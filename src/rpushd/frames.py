"""Stream frames (PROTOCOL.md, "POST /api/stream/{channel}").

A frame is a 2-byte big-endian length and that many bytes of payload; a
zero-length frame is a heartbeat. Over HTTP/1.1 each frame travels as one
chunk of the chunked transfer coding (RFC 9112, section 7.1); over HTTP/1.0
the body is close-delimited and frames go bare.

Pure functions and one sans-I/O decoder; nothing here touches a socket.
"""

from __future__ import annotations

from rpushd.deliveries import Delivery, Wire, close_envelope

MAX_FRAME_PAYLOAD = 0xFFFF
LAST_CHUNK = b"0\r\n\r\n"


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 2-byte big-endian length."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("frame payload exceeds 65535 bytes")
    return len(payload).to_bytes(2, "big") + payload


def encode_chunk(data: bytes) -> bytes:
    """Wrap ``data`` as one chunk of the chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Frame:
    """One frame, encoded once for each way a stream carries it.

    The same two byte strings are handed to every subscriber of a channel,
    so a message is encoded once however many streams receive it.
    """

    __slots__ = ("bare", "chunked")

    def __init__(self, payload: bytes) -> None:
        self.bare = encode_frame(payload)
        self.chunked = encode_chunk(self.bare)


HEARTBEAT = Frame(b"")


def chunked(wire: Wire, name: str) -> Wire:
    """``wire`` with each item sent as one chunk (HTTP/1.1 bodies)."""

    def message(delivery: Delivery) -> bytes:
        # Through the delivery's cache: bare and chunked share one encoding.
        return encode_chunk(delivery.encoded(wire))

    def control(kind: str, envelope: bytes, item_id: str | None) -> bytes:
        return encode_chunk(wire.control(kind, envelope, item_id))

    overflow = wire.overflow
    return Wire(
        name,
        message,
        control,
        encode_chunk(wire.heartbeat),
        _last_chunks(wire.goodbye),
        _last_chunks(wire.expired),
        None if overflow is None else _last_chunks(overflow),
    )


def _last_chunks(ending: bytes) -> bytes:
    return (encode_chunk(ending) if ending else b"") + LAST_CHUNK


def _no_control(kind: str, envelope: bytes, item_id: str | None) -> bytes:
    raise ValueError("the original stream carries no envelopes")


def _envelope_frame(kind: str, envelope: bytes, item_id: str | None) -> bytes:
    return encode_frame(envelope)


# The original stream (PROTOCOL.md): bare payloads, nothing else.
PLAIN = Wire(
    "frames",
    lambda d: encode_frame(d.payload),
    _no_control,
    HEARTBEAT.bare,
    b"",
    b"",
    None,
)
PLAIN_CHUNKED = chunked(PLAIN, "frames, chunked")

# The opt-in envelope stream (docs/STREAMS.md).
ENVELOPES = Wire(
    "envelope frames",
    lambda d: encode_frame(d.envelope()),
    _envelope_frame,
    HEARTBEAT.bare,
    encode_frame(close_envelope("shutdown")),
    encode_frame(close_envelope("token_expired")),
    encode_frame(close_envelope("slow")),
)
ENVELOPES_CHUNKED = chunked(ENVELOPES, "envelope frames, chunked")


class FrameDecoder:
    """Split a stream body back into frame payloads; for clients and tests."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of all complete frames."""
        self._buffer += data
        payloads = []
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                break
            payloads.append(bytes(self._buffer[2 : 2 + size]))
            del self._buffer[: 2 + size]
        return payloads
