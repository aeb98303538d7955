"""WebSocket frames and sessions (RFC 6455): literal bytes in, bytes out."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode

from rpushd.deliveries import Delivery, hello_envelope
from rpushd.websocket import (
    BAD_REQUEST,
    GOING_AWAY,
    TOKEN_EXPIRED,
    TOKEN_REFUSED,
    TOO_SLOW,
    WEBSOCKET,
    WebSocketSession,
    close_frame,
    encode_frame,
    refusal,
)

# RFC 6455, section 1.3: the sample key and the accept value it yields.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
# RFC 6455, section 5.7: the masking key of the examples.
MASK = b"\x37\xfa\x21\x3d"

UPGRADE = {
    "host": "localhost",
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": SAMPLE_KEY,
    "sec-websocket-version": "13",
}


def masked(opcode: int, payload: bytes) -> bytes:
    """A final frame as a client sends it: masked with :data:`MASK`."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    else:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    body = bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode]) + length + MASK + body


def close_code(frame: bytes) -> int:
    assert frame[0] == 0x88, frame
    return int.from_bytes(frame[2:4], "big")


# Frames the daemon sends.


def test_masked_helper_reproduces_the_rfc_example() -> None:
    # RFC 6455, section 5.7: a masked text frame holding "Hello".
    assert masked(0x1, b"Hello") == bytes.fromhex("8185 37fa213d 7f9f4d5158")


def test_text_frame_is_unmasked_and_final() -> None:
    assert encode_frame(Opcode.TEXT, b"Hello") == b"\x81\x05Hello"


def test_text_frame_uses_the_16_bit_length_from_126_bytes() -> None:
    assert encode_frame(Opcode.TEXT, b"x" * 126) == b"\x81\x7e\x00\x7e" + b"x" * 126
    assert encode_frame(Opcode.TEXT, b"x" * 300) == b"\x81\x7e\x01\x2c" + b"x" * 300


def test_ping_frame_is_empty() -> None:
    assert encode_frame(Opcode.PING, b"") == b"\x89\x00"
    assert WEBSOCKET.heartbeat == b"\x89\x00"


def test_close_frame_holds_the_code_then_the_reason() -> None:
    assert close_frame(1001, "shutdown") == b"\x88\x0a\x03\xe9shutdown"
    assert close_frame(4001, "invalid token") == b"\x88\x0f\x0f\xa1invalid token"


def test_close_codes_are_those_of_the_contract() -> None:
    assert (GOING_AWAY, TOKEN_REFUSED, TOKEN_EXPIRED, TOO_SLOW, BAD_REQUEST) == (
        1001,
        4001,
        4002,
        4008,
        4400,
    )


def test_message_is_one_text_frame_holding_the_envelope() -> None:
    delivery = Delivery("0badcafe", 42, "room", b'{"x":1}', 0.0)
    envelope = delivery.envelope()
    assert delivery.encoded(WEBSOCKET) == b"\x81" + bytes([len(envelope)]) + envelope


def test_control_is_one_text_frame_holding_the_envelope() -> None:
    hello = hello_envelope(15, "0badcafe", "0badcafe-41")
    assert WEBSOCKET.control("hello", hello, "0badcafe-41") == (
        b"\x81" + bytes([len(hello)]) + hello
    )


def test_goodbye_is_a_close_envelope_then_close_1001() -> None:
    envelope = b'{"type":"close","reason":"shutdown"}'
    assert WEBSOCKET.goodbye == (
        b"\x81" + bytes([len(envelope)]) + envelope + b"\x88\x0a\x03\xe9shutdown"
    )


def test_overflow_is_close_4008() -> None:
    assert WEBSOCKET.overflow is not None
    assert close_code(WEBSOCKET.overflow) == TOO_SLOW


# The handshake.


def test_handshake_accepts_a_valid_upgrade() -> None:
    response, switched = WebSocketSession.handshake("/api/ws?channel=a", UPGRADE)
    assert switched
    head = response.decode("latin-1")
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith("\r\n\r\n")
    lines = head.split("\r\n")
    assert "Upgrade: websocket" in lines
    assert "Connection: Upgrade" in lines
    assert f"Sec-WebSocket-Accept: {SAMPLE_ACCEPT}" in lines


def test_handshake_negotiates_no_extension() -> None:
    headers = {**UPGRADE, "sec-websocket-extensions": "permessage-deflate"}
    response, switched = WebSocketSession.handshake("/api/ws", headers)
    assert switched
    assert b"Sec-WebSocket-Extensions" not in response


@pytest.mark.parametrize(
    ("missing", "replaced", "status"),
    [
        ("sec-websocket-key", {}, b"400"),
        ("upgrade", {}, b"426"),
        ("connection", {}, b"426"),
        ("", {"sec-websocket-version": "8"}, b"400"),
        ("", {"sec-websocket-key": "short"}, b"400"),
        ("", {"upgrade": "h2c"}, b"426"),
    ],
    ids=["no key", "no upgrade", "no connection", "old version", "bad key", "h2c"],
)
def test_handshake_refuses_a_bad_upgrade(
    missing: str, replaced: dict[str, str], status: bytes
) -> None:
    headers = {**UPGRADE, **replaced}
    headers.pop(missing, None)
    response, switched = WebSocketSession.handshake("/api/ws", headers)
    assert not switched
    assert response.startswith(b"HTTP/1.1 " + status + b" ")


@pytest.mark.parametrize(
    ("status", "version", "expected"),
    [
        (400, "8", (426, [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])),
        (426, "13", (426, [("Upgrade", "websocket")])),
        (400, "13", (400, [])),
        (400, "", (400, [])),
        (500, "13", (400, [])),
    ],
)
def test_refused_handshake_says_which_version_and_protocol_to_use(
    status: int, version: str, expected: tuple[int, list[tuple[str, str]]]
) -> None:
    assert refusal(status, version) == expected


# What the client sends.


def test_masked_ping_is_answered_with_a_pong_of_the_same_data() -> None:
    session = WebSocketSession()
    # RFC 6455, section 5.7: a pong answers a ping with the same payload.
    assert session.receive(masked(0x9, b"Hello")) == b"\x8a\x05Hello"
    assert not session.closed


def test_pong_and_text_messages_are_dropped() -> None:
    session = WebSocketSession()
    assert session.receive(masked(0xA, b"")) == b""
    assert session.receive(masked(0x1, b"Hello")) == b""
    assert session.receive(masked(0x2, b"\x00\x01")) == b""
    assert not session.closed


def test_frames_split_across_reads_are_reassembled() -> None:
    session = WebSocketSession()
    frame = masked(0x9, b"Hello")
    assert session.receive(frame[:3]) == b""
    assert session.receive(frame[3:]) == b"\x8a\x05Hello"


def test_client_close_is_detected_and_echoed() -> None:
    session = WebSocketSession()
    reply = session.receive(masked(0x8, b"\x03\xe8bye"))
    assert session.closed
    assert close_code(reply) == 1000


def test_message_over_the_limit_closes_with_1009() -> None:
    session = WebSocketSession()
    reply = session.receive(masked(0x1, b"x" * 5000))
    assert session.closed
    assert close_code(reply) == 1009


def test_unmasked_client_frame_closes_with_a_protocol_error() -> None:
    session = WebSocketSession()
    reply = session.receive(b"\x89\x00")
    assert session.closed
    assert close_code(reply) == 1002


def test_close_starts_a_close_once() -> None:
    session = WebSocketSession()
    assert session.close(TOO_SLOW, "x") == b"\x88\x03\x0f\xa8x"
    assert session.closed
    assert session.close(GOING_AWAY, "again") == b""
