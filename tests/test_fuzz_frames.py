"""Frames and chunks under property-based testing.

Any sequence of payloads, framed and cut at any points, comes back out of
:class:`FrameDecoder` whole and in order; every chunk :func:`encode_chunk`
writes reads back, through our own reading of RFC 9112 section 7.1 and
through llhttp (httptools), as the bytes that went in.
"""

from __future__ import annotations

import itertools

import httptools
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fuzzing  # noqa: F401  (loads the hypothesis profile)
from rpushd.frames import (
    HEARTBEAT,
    LAST_CHUNK,
    MAX_FRAME_PAYLOAD,
    Frame,
    FrameDecoder,
    encode_chunk,
    encode_frame,
)

# Hypothesis draws a few kilobytes per example at most, so payloads up to
# the 65535-byte limit are built by repeating a short drawn pattern.
long_payloads = st.builds(
    lambda pattern, size: (pattern * size)[:size],
    st.binary(min_size=1, max_size=8),
    st.sampled_from([255, 256, 4096, 65534, MAX_FRAME_PAYLOAD]),
)
payloads = st.binary(max_size=300) | long_payloads
payload_lists = st.lists(payloads, max_size=12)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (any positions, in any order)."""
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def dechunk(body: bytes) -> tuple[list[bytes], bytes]:
    """Read a chunked body the way RFC 9112, section 7.1 describes it.

    Returns the chunks' data and what follows the last chunk.
    """
    chunks: list[bytes] = []
    while True:
        line, crlf, body = body.partition(b"\r\n")
        assert crlf and line and all(c in b"0123456789abcdef" for c in line), line
        size = int(line, 16)
        if size == 0:
            assert body.startswith(b"\r\n"), body
            return chunks, body[2:]
        assert body[size : size + 2] == b"\r\n"
        chunks.append(body[:size])
        body = body[size + 2 :]


class _Body:
    """Collects a response body as llhttp decodes it."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


# FrameDecoder.


@given(items=payload_lists, points=st.lists(st.integers(0, 2**20), max_size=20))
def test_decoder_returns_every_payload_whatever_the_cuts(
    items: list[bytes], points: list[int]
) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    decoder = FrameDecoder()

    received = []
    for piece in cut(stream, points):
        received += decoder.feed(piece)
    assert received == items
    assert decoder.feed(b"") == []


@given(items=st.lists(st.binary(max_size=20), max_size=6))
def test_decoder_fed_byte_by_byte_returns_every_payload(items: list[bytes]) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    decoder = FrameDecoder()

    received = []
    for at in range(len(stream)):
        received += decoder.feed(stream[at : at + 1])
    assert received == items


@given(items=payload_lists, data=st.data())
def test_decoder_given_a_truncated_stream_returns_only_whole_frames(
    items: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(item) for item in items)
    end = data.draw(st.integers(0, len(stream)), label="end")

    received = FrameDecoder().feed(stream[:end])
    assert received == items[: len(received)]
    assert len(b"".join(encode_frame(item) for item in received)) <= end


@given(payload=st.binary(max_size=300) | long_payloads)
def test_frame_is_the_length_then_the_payload(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert int.from_bytes(frame[:2], "big") == len(payload)
    assert frame[2:] == payload


@pytest.mark.parametrize("size", [MAX_FRAME_PAYLOAD + 1, 2**16 + 5, 2**20])
def test_frame_payload_past_the_limit_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_frame(bytes(size))


# Chunks.


@given(items=st.lists(st.binary(max_size=300) | long_payloads, max_size=8))
@example(items=[])
@example(items=[b""])
def test_chunks_read_back_as_written(items: list[bytes]) -> None:
    body = b"".join(encode_chunk(item) for item in items if item) + LAST_CHUNK

    chunks, rest = dechunk(body)
    assert chunks == [item for item in items if item]
    assert rest == b""


@given(items=payload_lists, points=st.lists(st.integers(0, 2**20), max_size=10))
def test_stream_body_read_by_llhttp_gives_back_the_frames(
    items: list[bytes], points: list[int]
) -> None:
    body = b"".join(Frame(item).chunked for item in items) + LAST_CHUNK
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    collected = _Body()
    parser = httptools.HttpResponseParser(collected)

    for piece in cut(head + body, points):
        parser.feed_data(piece)
    assert collected.complete
    assert FrameDecoder().feed(bytes(collected.body)) == items


@given(payload=payloads)
def test_frame_chunked_is_the_bare_frame_as_one_chunk(payload: bytes) -> None:
    frame = Frame(payload)
    assert frame.bare == encode_frame(payload)
    assert dechunk(frame.chunked + LAST_CHUNK) == ([frame.bare], b"")


def test_heartbeat_is_an_empty_frame() -> None:
    assert HEARTBEAT.bare == b"\x00\x00"
    assert HEARTBEAT.chunked == b"2\r\n\x00\x00\r\n"
