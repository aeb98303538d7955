"""One client connection: HTTP/1.1 parsed by httptools, answered in order.

A connection moves through a few states::

    IDLE ──first byte──▶ REQUEST ──complete──▶ IDLE (keep-alive)
                            │
                            ├──subscribe───▶ STREAMING (until a side closes)
                            └──refused─────▶ CLOSING (lingering close)

IDLE waits at most the keep-alive timeout for a next request, REQUEST at
most the request timeout for its headers and body (408 when it runs out).
A request refused from its headers alone is answered at once; the
connection then stops writing, discards what the client still sends for a
moment and closes, so that the answer is not lost to a TCP reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import cast

import httptools
import orjson

from rpushd import frames, sse, websocket
from rpushd.endpoints import (
    EVENTS,
    MAX_BODY_BYTES,
    WEBSOCKET,
    Endpoints,
    OpenStream,
    Route,
)
from rpushd.http11 import (
    Request,
    Response,
    error_response,
    serialize_response,
    stream_head,
)
from rpushd.hub import Hub
from rpushd.streams import Stream
from rpushd.websocket import WebSocketSession

logger = logging.getLogger("rpushd.connection")

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_COUNT = 100
LINGER_SECS = 2.0
# httptools reports a header line only once it is complete, and a chunk's
# extensions not at all, so raw bytes are counted too: no request may take
# more than this from the wire, whatever its framing.
MAX_REQUEST_BYTES = MAX_HEADER_BYTES + 2 * MAX_BODY_BYTES


class State(enum.Enum):
    IDLE = "idle"
    REQUEST = "request"
    UNPARSED_BODY = "unparsed body"
    STREAMING = "streaming"
    CLOSING = "closing"


class _Stop(Exception):
    """Raised from a parser callback to stop parsing the buffer."""


class HttpConnection(asyncio.Protocol):
    """Serves one TCP connection for the daemon."""

    # Thousands of these live as idle streams; slots keep each one small.
    __slots__ = (
        "_hub",
        "_endpoints",
        "_loop",
        "_transport",
        "_parser",
        "_on_deadline",
        "_state",
        "_reading_paused",
        "peer",
        "stream",
        "_url",
        "_headers",
        "_header_bytes",
        "_header_count",
        "_body",
        "_route",
        "_path",
        "_query",
        "_request_bytes",
        "_began_in_this_read",
        "_unparsed_body_left",
        "_websocket",
        "_head_request",
    )

    def __init__(self, hub: Hub, endpoints: Endpoints) -> None:
        self._hub = hub
        self._endpoints = endpoints
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = None
        self._on_deadline: Callable[[], None] = self._timed_out
        self._state = State.IDLE
        self._reading_paused = False
        self.peer = "-"
        self.stream: Stream | None = None
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body = bytearray()
        self._route: Route | None = None
        self._path = ""
        self._query = ""
        self._head_request = False
        self._request_bytes = 0
        self._began_in_this_read = False
        self._unparsed_body_left = 0
        self._websocket: WebSocketSession | None = None

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing.
        self._transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer = f"{peername[0]}:{peername[1]}"
        if len(self._hub.connections) >= self._hub.max_connections:
            self._turn_away()
            return

        self._parser = httptools.HttpRequestParser(self)
        self._hub.connections.add(self)
        # A new connection owes us a request as promptly as a started one.
        self._arm_timer(self._hub.config.request_timeout_secs)

    def data_received(self, data: bytes) -> None:
        if self._parser is None and self._state is not State.STREAMING:
            return
        if self._state is State.UNPARSED_BODY:
            self._take_unparsed_body(data)
            return
        if self._state is State.STREAMING and self._websocket is not None:
            self._websocket_received(data)
            return
        if self._state in (State.STREAMING, State.CLOSING):
            return
        assert self._parser is not None

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Stop):
                self._refuse(error_response(400, "malformed http request"))
        else:
            self._count_request_bytes(len(data))

    def eof_received(self) -> bool:
        # The client half-closed: no more requests will come. A stream has
        # nothing left to read either, and HTTP clients that half-close a
        # stream are gone for good, so close the whole connection.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._hub.connections.discard(self)
        if self.stream is not None:
            self._hub.close_stream(self.stream)
        self._transport = None
        self._parser = None

    def pause_writing(self) -> None:
        # A client that pipelines requests but does not read the answers
        # must not make us buffer without end; streams bound themselves.
        if self._state is not State.STREAMING and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def resume_writing(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._transport.resume_reading()
            self._reading_paused = False

    # httptools callbacks.

    def on_message_begin(self) -> None:
        self._reset_request()
        self._state = State.REQUEST
        self._began_in_this_read = True
        self._arm_timer(self._hub.config.request_timeout_secs)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        self._header_count += 1
        if self._header_count > MAX_HEADER_COUNT:
            self._refuse(error_response(431, "too many header fields"))
            raise _Stop

        key = name.decode("latin-1").lower()
        # RFC 9110, section 5.5: whitespace around a value is not part of it.
        text = value.decode("latin-1").strip(" \t")
        if key in self._headers and key not in ("authorization", "content-type"):
            self._headers[key] += ", " + text
        elif key in self._headers:
            # Two credentials or two body types: ambiguous, so refuse both.
            self._headers[key] = ""
        else:
            self._headers[key] = text

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        method = self._parser.get_method().decode("ascii", "replace")
        self._head_request = method == "HEAD"
        try:
            url = httptools.parse_url(bytes(self._url))
        except httptools.HttpParserInvalidURLError:
            self._refuse(error_response(400, "malformed request target"))
            raise _Stop from None
        self._path = (url.path or b"").decode("latin-1")
        self._query = (url.query or b"").decode("latin-1")

        route = self._endpoints.resolve(method, self._path)
        early = route if isinstance(route, Response) else None
        if early is None:
            assert isinstance(route, Route)
            self._route = route
            early = self._endpoints.check_head(route, self._headers)
        if early is not None:
            self._refuse(early)
            raise _Stop

        if self._headers.get("expect", "").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > MAX_BODY_BYTES:
            self._refuse(error_response(413, "request body exceeds 16 KiB"))
            raise _Stop

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._parser.should_upgrade():
            # llhttp ends the message at the headers when the client asks
            # to switch protocols; a body, if any, follows unparsed.
            length = self._headers.get("content-length", "0")
            self._unparsed_body_left = int(length) if length.isdigit() else 0
            if "transfer-encoding" in self._headers:
                self._refuse(error_response(400, "upgrade with a chunked body"))
                raise _Stop
            if self._unparsed_body_left:
                self._state = State.UNPARSED_BODY
                return
        self._complete_request()

    def _complete_request(self) -> None:
        assert self._parser is not None and self._route is not None
        self._cancel_timer()
        method = self._parser.get_method().decode("ascii")
        request = Request(
            method,
            self._path,
            self._query,
            self._headers,
            bytes(self._body),
            self._parser.get_http_version(),
        )

        try:
            result = self._endpoints.handle(self._route, request)
        except Exception:
            logger.exception("bug while answering %s %s", method, self._path)
            result = error_response(500, "internal error", close=True)

        if isinstance(result, OpenStream):
            self._open_stream(result, request)
            raise _Stop
        if self._route.endpoint == WEBSOCKET and result.status < 500:
            self._refuse_websocket(result, request)
            raise _Stop

        # After an upgrade request the parser cannot read another request.
        keep_alive = (
            self._parser.should_keep_alive()
            and not self._parser.should_upgrade()
            and not result.close
        )
        self._write(
            serialize_response(
                result, keep_alive=keep_alive, head_only=method == "HEAD"
            )
        )
        if not keep_alive:
            self._close_after_writing()
            raise _Stop

        self._state = State.IDLE
        self._reset_request()
        self._arm_timer(self._hub.config.keepalive_timeout_secs)

    # Shutdown, called by the server.

    @property
    def receiving_request(self) -> bool:
        """Whether a request has begun but is not yet complete."""
        return self._state in (State.REQUEST, State.UNPARSED_BODY)

    def shutdown(self) -> None:
        """Close now if idle; a request in progress may still finish."""
        if self._state is State.IDLE and self._transport is not None:
            self._transport.close()

    def refuse_unfinished(self) -> None:
        """Answer 503 to a request still arriving (grace period is over)."""
        if self.receiving_request:
            self._refuse(error_response(503, "shutting down"))
            # No lingering for the client's end: the daemon is exiting.
            if self._transport is not None:
                self._transport.close()

    def abort(self) -> None:
        """Drop the connection whatever its state."""
        if self._transport is not None:
            self._transport.abort()

    # Helpers.

    def _reset_request(self) -> None:
        self._url = bytearray()
        self._headers = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body = bytearray()
        self._route = None
        self._path = ""
        self._query = ""
        self._head_request = False

    def _turn_away(self) -> None:
        # Over RPUSHD_MAX_CONNECTIONS: answer before reading anything, and
        # never at the expense of a connection we already serve.
        self._hub.counters.refused_connections_total += 1
        logger.warning(
            "refused connection from %s: RPUSHD_MAX_CONNECTIONS (%d) reached",
            self.peer,
            self._hub.max_connections,
        )
        refusal = error_response(503, "too many connections", Retry_After="5")
        self._refuse(refusal)

    def _after_upgrade(self, rest: bytes) -> None:
        """The parser stopped at a protocol switch we do not perform."""
        if self._state is State.UNPARSED_BODY:
            self._take_unparsed_body(rest)
        elif self._state is State.IDLE:
            # Answered already, without keep-alive: nothing more to read.
            self._close_after_writing()

    def _take_unparsed_body(self, data: bytes) -> None:
        needed = self._unparsed_body_left
        if len(self._body) + min(needed, len(data)) > MAX_BODY_BYTES:
            self._refuse(error_response(413, "request body exceeds 16 KiB"))
            return

        self._body += data[:needed]
        self._unparsed_body_left -= min(needed, len(data))
        if not self._unparsed_body_left:
            self._state = State.REQUEST
            with contextlib.suppress(_Stop):
                self._complete_request()

    def _count_request_bytes(self, size: int) -> None:
        # The read that began a request may also hold earlier requests, so
        # only later reads are charged whole; the bound allows for one read.
        if self._state is not State.REQUEST:
            return
        if self._began_in_this_read:
            self._began_in_this_read = False
            return

        self._request_bytes += size
        if self._request_bytes > MAX_REQUEST_BYTES:
            if self._route is None:
                self._refuse(error_response(431, "request header fields too large"))
            else:
                self._refuse(error_response(413, "request body exceeds 16 KiB"))

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(error_response(431, "request header fields too large"))
            raise _Stop

    def _open_stream(self, subscription: OpenStream, request: Request) -> None:
        assert self._transport is not None
        chunked = request.http_version != "1.0"

        if subscription.transport == WEBSOCKET:
            if not chunked:
                # RFC 6455, section 4.1: the handshake is HTTP/1.1 or later.
                self._refuse(error_response(400, "websocket needs HTTP/1.1"))
                return
            head, switched = WebSocketSession.handshake(request.path, request.headers)
            if not switched:
                self._refuse(_handshake_refusal(head, request.headers))
                return
            wire = websocket.WEBSOCKET
            self._websocket = WebSocketSession()
        elif subscription.transport == EVENTS:
            preamble = sse.PREAMBLE
            head = sse.response_head(chunked=chunked)
            head += frames.encode_chunk(preamble) if chunked else preamble
            wire = sse.EVENTS_CHUNKED if chunked else sse.EVENTS
        else:
            head = stream_head(chunked=chunked)
            if subscription.envelope:
                wire = frames.ENVELOPES_CHUNKED if chunked else frames.ENVELOPES
            else:
                wire = frames.PLAIN_CHUNKED if chunked else frames.PLAIN

        self._state = State.STREAMING
        self._cancel_timer()
        self._parser = None
        self._reset_request()
        self.stream = self._hub.open_stream(
            self._transport,
            subscription.channels,
            wire,
            head,
            envelope=subscription.envelope,
            last_id=subscription.last_id,
            peer=self.peer,
            expires_at=subscription.expires_at,
        )

    def _refuse_websocket(self, refusal: Response, request: Request) -> None:
        """Complete the handshake, then close with a code the page can read.

        A browser never sees the status of a failed handshake, only that it
        failed; a close code after a successful one tells it why.
        """
        head, switched = WebSocketSession.handshake(request.path, request.headers)
        if not switched:
            self._refuse(refusal)
            return

        code = (
            websocket.TOKEN_REFUSED if refusal.status == 401 else websocket.BAD_REQUEST
        )
        reason = orjson.loads(refusal.body).get("error", "refused")
        self._write(head + websocket.close_frame(code, reason))
        self._close_after_writing()

    def _websocket_received(self, data: bytes) -> None:
        assert self._websocket is not None and self._transport is not None
        reply = self._websocket.receive(data)
        if reply:
            self._transport.write(reply)
        if self._websocket.closed:
            if self.stream is not None:
                self._hub.close_stream(self.stream)
            self._close_after_writing()

    def _refuse(self, response: Response) -> None:
        """Answer a request we will not read to its end, then close."""
        if self._state is State.CLOSING:
            return
        self._write(
            serialize_response(response, keep_alive=False, head_only=self._head_request)
        )
        self._close_after_writing()

    def _close_after_writing(self) -> None:
        # Half-close and drain for a moment: closing with unread input makes
        # the kernel send a reset, which can destroy the answer in flight.
        self._state = State.CLOSING
        transport = self._transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
            self._arm_timer(LINGER_SECS, transport.close)
        else:
            transport.close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _arm_timer(
        self, delay: float, callback: Callable[[], None] | None = None
    ) -> None:
        self._on_deadline = callback or self._timed_out
        self._hub.deadlines.set(self, self._loop.time() + delay)

    def _cancel_timer(self) -> None:
        self._hub.deadlines.clear(self)

    def deadline_passed(self) -> None:
        """The hub's deadline check found this connection's deadline passed."""
        self._on_deadline()

    def _timed_out(self) -> None:
        if self._state is State.REQUEST:
            logger.info("closed %s: request not received in time", self.peer)
            self._refuse(error_response(408, "request timeout"))
        elif self._transport is not None:
            self._transport.close()


def _handshake_refusal(head: bytes, headers: dict[str, str]) -> Response:
    """Our own JSON error for a handshake the WebSocket library refused."""
    status, extra = websocket.refusal(
        int(head.split(b" ", 2)[1]), headers.get("sec-websocket-version", "")
    )
    refused = error_response(status, "bad websocket handshake")
    refused.headers.extend(extra)
    return refused
