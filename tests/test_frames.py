"""Frames: literal bytes in, literal bytes out."""

from __future__ import annotations

import dataclasses

import pytest

from rpushd.deliveries import Delivery, Wire
from rpushd.frames import (
    ENVELOPES,
    ENVELOPES_CHUNKED,
    HEARTBEAT,
    LAST_CHUNK,
    PLAIN,
    PLAIN_CHUNKED,
    Frame,
    FrameDecoder,
    chunked,
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


# Wires: how each kind of length-prefixed stream encodes what it carries.

ENVELOPE = b'{"type":"message","id":"0badcafe-7","channel":"room","message":"hi"}'
CLOSE_SHUTDOWN = b'{"type":"close","reason":"shutdown"}'


def delivery() -> Delivery:
    return Delivery("0badcafe", 7, "room", b'"hi"', 0.0)


def counting_wire(calls: list[Delivery], **endings: bytes | None) -> Wire:
    """A wire whose message encoding records every call it gets."""

    def message(item: Delivery) -> bytes:
        calls.append(item)
        return b"<%s>" % item.payload

    return dataclasses.replace(PLAIN, name="counting", message=message, **endings)


def test_plain_wire_carries_the_bare_payload() -> None:
    assert delivery().encoded(PLAIN) == b'\x00\x04"hi"'
    assert PLAIN.heartbeat == b"\x00\x00"
    assert PLAIN.goodbye == b""
    assert PLAIN.overflow is None


def test_plain_wire_carries_no_envelopes() -> None:
    with pytest.raises(ValueError, match="no envelopes"):
        PLAIN.control("hello", b"{}", None)


def test_plain_chunked_wire_sends_each_frame_as_one_chunk() -> None:
    assert delivery().encoded(PLAIN_CHUNKED) == b'6\r\n\x00\x04"hi"\r\n'
    assert PLAIN_CHUNKED.heartbeat == b"2\r\n\x00\x00\r\n"
    # Shutdown ends the body and nothing else; an overflow just drops it.
    assert PLAIN_CHUNKED.goodbye == b"0\r\n\r\n"
    assert PLAIN_CHUNKED.overflow is None


def test_envelope_wire_frames_the_envelope() -> None:
    assert delivery().encoded(ENVELOPES) == b"\x00\x44" + ENVELOPE
    assert ENVELOPES.control("gap", b'{"type":"gap"}', None) == (
        b'\x00\x0e{"type":"gap"}'
    )
    assert ENVELOPES.control("hello", b"{}", "0badcafe-1") == b"\x00\x02{}"
    assert ENVELOPES.heartbeat == b"\x00\x00"


def test_envelope_wire_endings_are_close_envelopes() -> None:
    assert ENVELOPES.goodbye == b"\x00\x24" + CLOSE_SHUTDOWN
    assert ENVELOPES.expired == (b'\x00\x29{"type":"close","reason":"token_expired"}')
    assert ENVELOPES.overflow is not None
    assert (
        FrameDecoder()
        .feed(ENVELOPES.overflow)[0]
        .startswith(b'{"type":"close","reason":')
    )


def test_envelope_chunked_wire_sends_each_frame_as_one_chunk() -> None:
    assert delivery().encoded(ENVELOPES_CHUNKED) == (
        b"46\r\n\x00\x44" + ENVELOPE + b"\r\n"
    )
    assert ENVELOPES_CHUNKED.control("hello", b"{}", None) == b"4\r\n\x00\x02{}\r\n"
    assert ENVELOPES_CHUNKED.heartbeat == b"2\r\n\x00\x00\r\n"
    assert ENVELOPES_CHUNKED.goodbye == (
        b"26\r\n\x00\x24" + CLOSE_SHUTDOWN + b"\r\n0\r\n\r\n"
    )


def test_chunked_wraps_every_item_in_one_chunk() -> None:
    wire = chunked(counting_wire([]), "counting, chunked")
    assert wire.name == "counting, chunked"
    assert delivery().encoded(wire) == b'6\r\n<"hi">\r\n'
    assert wire.heartbeat == b"2\r\n\x00\x00\r\n"


def test_chunked_encodes_through_the_bare_wire_once() -> None:
    calls: list[Delivery] = []
    bare = counting_wire(calls)
    wrapped = chunked(bare, "counting, chunked")
    item = delivery()

    chunk = item.encoded(wrapped)
    assert item.encoded(wrapped) is chunk
    assert item.encoded(bare) == b'<"hi">'
    assert calls == [item]


def test_chunked_endings_close_the_body_with_the_last_chunk() -> None:
    wire = chunked(counting_wire([], goodbye=b"bye", overflow=b"slow"), "c")
    assert wire.goodbye == b"3\r\nbye\r\n0\r\n\r\n"
    assert wire.overflow == b"4\r\nslow\r\n0\r\n\r\n"

    silent = chunked(counting_wire([], goodbye=b"", overflow=None), "c")
    assert silent.goodbye == LAST_CHUNK
    assert silent.overflow is None
