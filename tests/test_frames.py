"""Frames: literal bytes in, literal bytes out."""

from __future__ import annotations

import pytest

from rpushd.frames import (
    HEARTBEAT,
    LAST_CHUNK,
    Frame,
    FrameDecoder,
    encode_chunk,
    encode_frame,
)

# Encoding.


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", b"\x00\x00"),
        (b"hi", b"\x00\x02hi"),
        (b'{"a":1}', b'\x00\x07{"a":1}'),
        (b"x" * 300, b"\x01\x2c" + b"x" * 300),
        (b"x" * 65535, b"\xff\xff" + b"x" * 65535),
    ],
    ids=["empty", "two bytes", "json", "300 bytes", "65535 bytes"],
)
def test_frame_is_a_big_endian_length_then_the_payload(
    payload: bytes, expected: bytes
) -> None:
    assert encode_frame(payload) == expected


def test_payload_over_65535_bytes_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_frame(b"x" * 65536)
    with pytest.raises(ValueError):
        Frame(b"x" * 65536)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00\x02hi", b"4\r\n\x00\x02hi\r\n"),
        (b"z" * 26, b"1a\r\n" + b"z" * 26 + b"\r\n"),
        (b"z" * 65537, b"10001\r\n" + b"z" * 65537 + b"\r\n"),
    ],
    ids=["small", "lowercase hex", "largest frame"],
)
def test_chunk_is_hex_size_crlf_data_crlf(data: bytes, expected: bytes) -> None:
    assert encode_chunk(data) == expected


def test_frame_holds_its_bare_and_chunked_encodings() -> None:
    frame = Frame(b"hi")
    assert frame.bare == b"\x00\x02hi"
    assert frame.chunked == b"4\r\n\x00\x02hi\r\n"


def test_heartbeat_is_the_empty_frame() -> None:
    assert HEARTBEAT.bare == b"\x00\x00"
    assert HEARTBEAT.chunked == b"2\r\n\x00\x00\r\n"


def test_last_chunk_ends_a_chunked_body() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


# Decoding.

PAYLOADS = [b"", b'{"a":1}', b"x" * 300, b"", b"\x00\x00\xff"]
BODY = b"".join(encode_frame(payload) for payload in PAYLOADS)


def test_decoder_returns_every_complete_frame_fed_at_once() -> None:
    assert FrameDecoder().feed(BODY) == PAYLOADS


def test_decoder_holds_a_partial_frame_until_it_completes() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x03ab") == []
    assert decoder.feed(b"c\x00") == [b"abc"]
    assert decoder.feed(b"\x00") == [b""]


def test_decoder_handles_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    received = []
    for index in range(len(BODY)):
        received += decoder.feed(BODY[index : index + 1])
    assert received == PAYLOADS


@pytest.mark.parametrize("first", range(0, len(BODY) + 1, 7))
def test_decoder_yields_the_same_frames_however_the_body_is_split(
    first: int,
) -> None:
    for second in range(first, len(BODY) + 1, 5):
        decoder = FrameDecoder()
        received = decoder.feed(BODY[:first])
        received += decoder.feed(BODY[first:second])
        received += decoder.feed(BODY[second:])
        assert received == PAYLOADS, (first, second)


def test_decoder_fed_nothing_returns_nothing() -> None:
    assert FrameDecoder().feed(b"") == []
