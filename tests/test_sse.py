"""Server-Sent Events: literal values in, literal bytes out."""

from __future__ import annotations

import pytest

from rpushd.deliveries import Delivery, close_envelope, gap_envelope, hello_envelope
from rpushd.sse import (
    EVENTS,
    EVENTS_CHUNKED,
    PREAMBLE,
    encode_event,
    response_head,
)

EPOCH = "0badcafe"
MESSAGE = b'{"type":"message","id":"0badcafe-42","channel":"room","message":{"x":1}}'
HELLO = hello_envelope(15, EPOCH, "0badcafe-41")
CLOSE_SHUTDOWN = b'event: close\ndata: {"type":"close","reason":"shutdown"}\n\n'


def delivery() -> Delivery:
    return Delivery(EPOCH, 42, "room", b'{"x":1}', 0.0)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# Events.


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, b"data: {}\n\n"),
        ({"event": "gap"}, b"event: gap\ndata: {}\n\n"),
        ({"event_id": "0badcafe-1"}, b"id: 0badcafe-1\ndata: {}\n\n"),
        (
            {"event": "hello", "event_id": "0badcafe-0"},
            b"event: hello\nid: 0badcafe-0\ndata: {}\n\n",
        ),
    ],
    ids=["data only", "named", "with id", "named with id"],
)
def test_event_is_optional_name_and_id_lines_then_one_data_line(
    kwargs: dict[str, str], expected: bytes
) -> None:
    assert encode_event(b"{}", **kwargs) == expected


def test_preamble_sets_the_reconnection_delay() -> None:
    assert PREAMBLE == b"retry: 2000\n\n"


# The close-delimited wire (HTTP/1.0).


def test_message_is_an_unnamed_event_with_its_id() -> None:
    expected = b"id: 0badcafe-42\ndata: " + MESSAGE + b"\n\n"
    assert EVENTS.message(delivery()) == expected
    assert delivery().encoded(EVENTS) == expected


def test_hello_is_a_named_event_carrying_the_start_position() -> None:
    assert EVENTS.control("hello", HELLO, "0badcafe-41") == (
        b"event: hello\nid: 0badcafe-41\ndata: " + HELLO + b"\n\n"
    )


def test_gap_is_a_named_event_without_an_id() -> None:
    gap = gap_envelope("room", "too_old")
    assert EVENTS.control("gap", gap, None) == (
        b'event: gap\ndata: {"type":"gap","channel":"room","reason":"too_old"}\n\n'
    )


def test_heartbeat_is_a_comment() -> None:
    assert EVENTS.heartbeat == b":\n\n"


def test_goodbye_is_a_close_event_saying_shutdown() -> None:
    assert EVENTS.goodbye == CLOSE_SHUTDOWN
    assert close_envelope("shutdown") in EVENTS.goodbye


def test_overflow_is_a_close_event() -> None:
    assert EVENTS.overflow is not None
    assert EVENTS.overflow.startswith(b'event: close\ndata: {"type":"close"')


# The chunked wire (HTTP/1.1).


def test_chunked_message_is_the_same_event_as_one_chunk() -> None:
    expected = chunk(b"id: 0badcafe-42\ndata: " + MESSAGE + b"\n\n")
    assert delivery().encoded(EVENTS_CHUNKED) == expected


def test_chunked_control_is_one_chunk() -> None:
    assert EVENTS_CHUNKED.control("hello", HELLO, "0badcafe-41") == chunk(
        b"event: hello\nid: 0badcafe-41\ndata: " + HELLO + b"\n\n"
    )


def test_chunked_heartbeat_is_one_chunk() -> None:
    assert EVENTS_CHUNKED.heartbeat == b"3\r\n:\n\n\r\n"


def test_chunked_goodbye_is_the_close_event_then_the_last_chunk() -> None:
    assert EVENTS_CHUNKED.goodbye == chunk(CLOSE_SHUTDOWN) + b"0\r\n\r\n"


def test_chunked_overflow_ends_the_body() -> None:
    assert EVENTS_CHUNKED.overflow is not None
    assert EVENTS.overflow is not None
    assert EVENTS_CHUNKED.overflow == chunk(EVENTS.overflow) + b"0\r\n\r\n"


# Response head.


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    assert head.endswith(b"\r\n\r\n")
    status, *lines = head[:-4].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    assert len(fields) == len(lines), "no header may appear twice"
    return status, fields


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "close"])
def test_response_head_announces_an_uncached_unbuffered_event_stream(
    chunked: bool,
) -> None:
    status, fields = parse_head(response_head(chunked=chunked))
    assert status == "HTTP/1.1 200 OK"
    assert fields["Content-Type"] == "text/event-stream; charset=utf-8"
    assert fields["Cache-Control"] == (
        "no-cache, no-store, must-revalidate, no-transform"
    )
    assert fields["Pragma"] == "no-cache"
    assert fields["Expires"] == "0"
    assert fields["X-Accel-Buffering"] == "no"
    assert fields["Date"].endswith(" GMT")
    assert "Content-Length" not in fields


def test_response_head_frames_the_body_by_chunks_or_by_closing() -> None:
    _, chunked = parse_head(response_head(chunked=True))
    assert chunked["Transfer-Encoding"] == "chunked"
    assert "Connection" not in chunked

    _, closing = parse_head(response_head(chunked=False))
    assert closing["Connection"] == "close"
    assert "Transfer-Encoding" not in closing
