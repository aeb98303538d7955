"""WebSocket streams (RFC 6455; docs/STREAMS.md, "WebSocket").

The handshake and everything the client sends go through the sans-I/O
protocol of the ``websockets`` library. What the daemon sends is built
here: a server's frames are never masked and no extension is negotiated,
so one text frame per message serves every WebSocket subscriber alike and
is written straight to each transport by the fan-out.
"""

from __future__ import annotations

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from rpushd.deliveries import Delivery, Wire, close_envelope

GOING_AWAY = 1001
TOKEN_REFUSED = 4001
TOKEN_EXPIRED = 4002
TOO_SLOW = 4008
BAD_REQUEST = 4400

# What the client may send us: pings, pongs, a close, and messages we drop.
MAX_CLIENT_MESSAGE = 4096

# The only version of the protocol there is (RFC 6455, section 4.1).
VERSION = "13"


def encode_frame(opcode: Opcode, data: bytes) -> bytes:
    """One unmasked frame, as a server sends it."""
    return Frame(opcode, data).serialize(mask=False, extensions=[])


def close_frame(code: int, reason: str) -> bytes:
    """A close frame with ``code`` and a short ``reason``."""
    return encode_frame(Opcode.CLOSE, Close(code, reason).serialize())


def _message(delivery: Delivery) -> bytes:
    return encode_frame(Opcode.TEXT, delivery.envelope())


def _control(kind: str, envelope: bytes, item_id: str | None) -> bytes:
    return encode_frame(Opcode.TEXT, envelope)


WEBSOCKET = Wire(
    "websocket",
    _message,
    _control,
    encode_frame(Opcode.PING, b""),
    _control("close", close_envelope("shutdown"), None)
    + close_frame(GOING_AWAY, "shutdown"),
    _control("close", close_envelope("token_expired"), None)
    + close_frame(TOKEN_EXPIRED, "token expired"),
    close_frame(TOO_SLOW, "too far behind"),
)


def refusal(status: int, version: str) -> tuple[int, list[tuple[str, str]]]:
    """Status and headers for a handshake refused with ``status``.

    ``version`` is the client's ``Sec-WebSocket-Version``. A version we do
    not speak gets 426 and the one we do (RFC 6455, section 4.4); a 426
    names the protocol to upgrade to (RFC 9110, section 15.5.22).
    """
    if version and version != VERSION:
        return 426, [("Upgrade", "websocket"), ("Sec-WebSocket-Version", VERSION)]
    if status == 426:
        return 426, [("Upgrade", "websocket")]
    return (status if 400 <= status < 500 else 400), []


class WebSocketSession:
    """The handshake and the client's half of one WebSocket connection."""

    def __init__(self) -> None:
        # Our HTTP parser has already read the handshake request, so the
        # protocol that reads the client's frames starts out open; the one
        # that answers the handshake is used for that alone.
        self._protocol = ServerProtocol(state=State.OPEN, max_size=MAX_CLIENT_MESSAGE)
        self.closed = False

    @staticmethod
    def handshake(target: str, headers: dict[str, str]) -> tuple[bytes, bool]:
        """The handshake response and whether it switched protocols."""
        request_headers = Headers()
        for name, value in headers.items():
            request_headers[name] = value
        protocol = ServerProtocol()
        response = protocol.accept(Request(target, request_headers))
        protocol.send_response(response)
        return b"".join(protocol.data_to_send()), response.status_code == 101

    def receive(self, data: bytes) -> bytes:
        """Take bytes from the client; return what must be sent back.

        Pings are answered, messages dropped. Once the client closes (or
        breaks the protocol) :attr:`closed` is set and the answer holds the
        closing frame.
        """
        protocol = self._protocol
        protocol.receive_data(data)
        protocol.events_received()
        if protocol.state in (State.CLOSING, State.CLOSED):
            self.closed = True
        return b"".join(protocol.data_to_send())

    def close(self, code: int, reason: str) -> bytes:
        """The frame that starts a close with ``code``."""
        self.closed = True
        try:
            self._protocol.send_close(code, reason)
        except InvalidState:
            return b""
        return b"".join(self._protocol.data_to_send())
