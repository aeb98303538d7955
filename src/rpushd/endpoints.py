"""The four endpoints of PROTOCOL.md: routing, checks and handlers.

Requests are judged in two steps. :meth:`Endpoints.check_head` runs as soon
as the headers are in, so that a stranger on a privileged endpoint, a wrong
content type or an announced oversized body is refused before any body is
read. :meth:`Endpoints.handle` then answers the complete request. Both are
synchronous: publishing hands the frame to every subscriber before the 204
is written.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from rpushd import channels, metrics, stats, tokens
from rpushd.errors import HTTPError, InvalidToken
from rpushd.http11 import (
    JSON_TYPE,
    NO_CACHE_HEADERS,
    Request,
    Response,
    error_response,
)
from rpushd.hub import Hub
from rpushd.payloads import decode_object, encode_message

logger = logging.getLogger("rpushd.endpoints")

MAX_BODY_BYTES = 16 * 1024
STREAM_PREFIX = "/api/stream/"
TRUTHY = frozenset({"1", "true", "yes", "on"})
HEALTHY = Response(200, b'{"status":"ok"}', JSON_TYPE)

_RENDERERS = {
    "text": (stats.render_text, stats.TEXT_TYPE),
    "json": (stats.render_json, stats.JSON_TYPE),
    "xml": (stats.render_xml, stats.XML_TYPE),
}


@dataclass(frozen=True, slots=True)
class Route:
    """Which endpoint a request is for, and what it demands."""

    endpoint: str
    privileged: bool = False
    takes_body: bool = False
    channel: str = ""


FRAMES = "frames"
EVENTS = "events"
WEBSOCKET = "websocket"


@dataclass(frozen=True, slots=True)
class OpenStream:
    """The answer to a valid subscribe request: start streaming.

    ``transport`` is :data:`FRAMES`, :data:`EVENTS` or :data:`WEBSOCKET`;
    ``envelope`` is false only for the original length-prefixed stream.
    """

    channels: tuple[str, ...]
    transport: str = FRAMES
    envelope: bool = False
    last_id: str | None = None
    expires_at: int | None = None


_ROUTES: dict[str, tuple[Route, tuple[str, ...]]] = {
    "/healthz": (Route("healthz"), ("GET", "HEAD")),
    "/api/publish": (Route("publish", privileged=True, takes_body=True), ("POST",)),
    "/api/stats": (Route("stats", privileged=True), ("GET", "HEAD")),
    "/metrics": (Route("metrics", privileged=True), ("GET", "HEAD")),
    "/api/stream": (Route("stream_many", takes_body=True), ("POST",)),
    "/api/events": (Route(EVENTS), ("GET",)),
    "/api/ws": (Route(WEBSOCKET), ("GET",)),
}


class Endpoints:
    """Routes requests and answers them against one :class:`Hub`."""

    def __init__(self, hub: Hub, files: Mapping[str, Response] | None = None) -> None:
        self.hub = hub
        # Fixed answers by path (the dev demo page); none in production.
        self._files = dict(files or {})

    def resolve(self, method: str, path: str) -> Route | Response:
        """The route for ``method`` and ``path``, or a 404 or 405 answer."""
        if path in self._files:
            if method in ("GET", "HEAD"):
                return Route("file", channel=path)
            return error_response(405, "method not allowed", Allow="GET, HEAD")

        found = _ROUTES.get(path)
        if found is None and path.startswith(STREAM_PREFIX):
            segment = path[len(STREAM_PREFIX) :]
            if segment and "/" not in segment:
                found = (Route("stream", takes_body=True, channel=segment), ("POST",))
        if found is None:
            return error_response(404, "not found")

        route, methods = found
        if method not in methods:
            return error_response(405, "method not allowed", Allow=", ".join(methods))
        return route

    def check_head(self, route: Route, headers: dict[str, str]) -> Response | None:
        """Refuse a request from its headers alone, or return ``None``."""
        if route.privileged and not self._authorized(headers):
            self.hub.counters.auth_failures_total += 1
            logger.warning(
                "refused %s request: missing or wrong bearer secret", route.endpoint
            )
            return error_response(401, "unauthorized")

        if route.takes_body:
            if not _is_json(headers.get("content-type", "")):
                return error_response(415, "content type must be application/json")
            length = headers.get("content-length", "0")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return error_response(413, "request body exceeds 16 KiB")
        return None

    def handle(self, route: Route, request: Request) -> Response | OpenStream:
        """Answer a complete request."""
        try:
            if route.endpoint == "healthz":
                return HEALTHY
            if route.endpoint == "file":
                return self._files[route.channel]
            if route.endpoint == "publish":
                return self._publish(request)
            if route.endpoint == "stats":
                return self._stats(request)
            if route.endpoint == "metrics":
                return self._metrics()
            if route.endpoint == "stream":
                return self._subscribe(route, request)
            if route.endpoint == "stream_many":
                return self._subscribe_many(request)
            return self._subscribe_by_query(route, request)
        except HTTPError as exc:
            return error_response(exc.status, exc.message)

    # Handlers.

    def _publish(self, request: Request) -> Response:
        with self.hub.metrics.publish_seconds.time():
            return self._publish_timed(request)

    def _publish_timed(self, request: Request) -> Response:
        body = decode_object(request.body, ("channel", "message"))
        channel = _channel_name(body["channel"])
        payload = encode_message(body["message"])
        return_id = _optional_flag(body, "return_id")

        delivery = self.hub.publish(channel, payload)
        if return_id:
            return Response(200, orjson.dumps({"id": delivery.id}), JSON_TYPE)
        return Response(204)

    def _stats(self, request: Request) -> Response:
        query = dict(parse_qsl(request.query, keep_blank_values=True))
        mode = query.get("mode", "text")
        if mode not in _RENDERERS:
            raise HTTPError(400, "mode must be text, json or xml")

        verbose = query.get("verbose", "").lower() in TRUTHY
        render, content_type = _RENDERERS[mode]
        body = render(self.hub.snapshot(verbose=verbose))
        return Response(200, body, content_type, list(NO_CACHE_HEADERS))

    def _metrics(self) -> Response:
        headers = list(NO_CACHE_HEADERS)
        return Response(200, self.hub.metrics.render(), metrics.CONTENT_TYPE, headers)

    def _subscribe(self, route: Route, request: Request) -> OpenStream:
        body = decode_object(request.body, ("token",))
        envelope = _optional_flag(body, "envelope")
        last_id = _optional_string(body, "last_id")
        if last_id is not None and not envelope:
            raise HTTPError(422, "last_id needs envelope: true")

        try:
            channel = unquote(route.channel, errors="strict")
        except UnicodeDecodeError:
            raise HTTPError(400, "invalid channel name") from None
        channels, expires_at = self._authorize([(channel, body["token"])])
        return OpenStream(channels, FRAMES, envelope, last_id, expires_at)

    def _subscribe_many(self, request: Request) -> OpenStream:
        body = decode_object(request.body, ("subscriptions",))
        subscriptions = body["subscriptions"]
        if not isinstance(subscriptions, list) or not all(
            isinstance(item, dict) and "channel" in item and "token" in item
            for item in subscriptions
        ):
            raise HTTPError(422, "subscriptions must be a list of {channel, token}")

        pairs = [(item["channel"], item["token"]) for item in subscriptions]
        last_id = _optional_string(body, "last_id")
        channels, expires_at = self._authorize(pairs)
        return OpenStream(channels, FRAMES, True, last_id, expires_at)

    def _subscribe_by_query(self, route: Route, request: Request) -> OpenStream:
        # EventSource and WebSocket cannot send a body: the subscriptions
        # come as channel=...&token=... pairs, in order.
        query = parse_qsl(request.query, keep_blank_values=True)
        channels = [value for key, value in query if key == "channel"]
        tokens_given = [value for key, value in query if key == "token"]
        if len(channels) != len(tokens_given):
            raise HTTPError(400, "each channel needs a token")

        last_ids = [value for key, value in query if key == "last_id"]
        last_id = last_ids[-1] if last_ids else None
        if last_id is None and route.endpoint == EVENTS:
            last_id = request.headers.get("last-event-id") or None

        pairs = list(zip(channels, tokens_given, strict=True))
        authorized, expires_at = self._authorize(pairs)
        return OpenStream(authorized, route.endpoint, True, last_id, expires_at)

    def _authorize(self, pairs: list[tuple[Any, Any]]) -> tuple[tuple[str, ...], int]:
        """Check every (channel, token) pair.

        Returns the channels, deduplicated, and when the first token expires.
        """
        if not pairs:
            raise HTTPError(400, "no channel to subscribe to")
        if len(pairs) > self.hub.config.max_channels_per_stream:
            raise HTTPError(400, "too many channels for one stream")
        for _, token in pairs:
            if not isinstance(token, str):
                raise HTTPError(422, "token must be a string")
        channels = [_channel_name(channel) for channel, _ in pairs]

        secrets = self.hub.config.subscribe_secrets
        now = int(time.time())
        expiries = []
        for channel, (_, token) in zip(channels, pairs, strict=True):
            try:
                expiries.append(tokens.verify(token, channel, secrets, now))
            except InvalidToken as exc:
                self.hub.counters.refused_subscriptions_total += 1
                self.hub.metrics.refused_subscriptions.labels(exc.reason).inc()
                logger.info("refused subscription to %s: %s", channel, exc.reason)
                raise HTTPError(401, "invalid token") from None
        return tuple(dict.fromkeys(channels)), min(expiries)

    def _authorized(self, headers: dict[str, str]) -> bool:
        value = headers.get("authorization", "")
        if not value.startswith("Bearer ") or len(value) == len("Bearer "):
            return False
        presented = value[len("Bearer ") :].encode("latin-1")
        # Compare with every accepted secret, so the time taken does not
        # tell which one (if any) nearly matched.
        matches = [
            hmac.compare_digest(presented, secret)
            for secret in self.hub.config.publish_secrets
        ]
        return any(matches)


def _optional_flag(body: dict[str, Any], field: str) -> bool:
    # Absent and null both mean false, as absent and null mean no last_id.
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HTTPError(422, f"{field} must be true or false")
    return value


def _optional_string(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise HTTPError(422, f"{field} must be a string")
    return value


def _channel_name(value: Any) -> str:
    if not isinstance(value, str):
        raise HTTPError(422, "channel must be a string")
    if not channels.is_valid_name(value):
        raise HTTPError(400, "invalid channel name")
    return value


def _is_json(content_type: str) -> bool:
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )
