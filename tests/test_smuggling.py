"""Request smuggling, tried on the daemon alone and behind each proxy.

Every case is a request whose framing two parsers could read differently
(Content-Length against Transfer-Encoding, two lengths, a disguised
coding, a broken line before a pipelined request), with a complete,
authorized publish request behind it. Were a proxy and the daemon to
disagree on where the first request ends, the daemon would take that
publish for a request of its own. Each case must be refused, by the proxy
or by the daemon, with exactly one answer, the connection closed, and no
publish counted. The same bytes go to the daemon directly and through the
shipped nginx, HAProxy and Apache configurations (tests/proxies.py), all
in front of one daemon.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from helpers import PUBLISH_SECRET, UNIT, Daemon, connect, read_head
from proxies import PREFIX, PROXIES, running_proxy

SMUGGLED_BODY = b'{"channel":"smuggled","message":"smuggled"}'
SMUGGLED = (
    b"POST /api/publish HTTP/1.1\r\nHost: localhost\r\n"
    b"Authorization: Bearer " + PUBLISH_SECRET.encode() + b"\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(SMUGGLED_BODY) + SMUGGLED_BODY
)
# A chunked body that ends at once, followed by the smuggled request.
LAST_CHUNK_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass(frozen=True)
class Target:
    """Where the bytes go: the daemon itself, or a proxy in front of it."""

    name: str
    port: int
    prefix: str


@dataclass(frozen=True)
class Case:
    """A request head with ambiguous framing, and its body.

    ``head(prefix)`` gives the head up to and including its last header
    line; ``body`` follows the blank line. The refusal is a 400, unless
    ``other_refusals`` names another status for a target.
    """

    name: str
    head: Callable[[str], bytes]
    body: bytes
    other_refusals: Mapping[str, int] = field(default_factory=dict)

    def request(self, prefix: str) -> bytes:
        return self.head(prefix) + b"\r\n" + self.body


def subscribe_head(*fields: bytes) -> Callable[[str], bytes]:
    """A subscribe request's head with ``fields`` as its framing."""

    def head(prefix: str) -> bytes:
        return (
            b"POST %s/api/stream/room-1 HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n"
            % prefix.encode()
            + b"".join(field + b"\r\n" for field in fields)
        )

    return head


def raw_head(template: bytes) -> Callable[[str], bytes]:
    """A head given whole, with ``%s`` where the path prefix goes."""
    return lambda prefix: template % prefix.encode()


def length(size: int) -> bytes:
    return b"Content-Length: %d" % size


CHUNKED = b"Transfer-Encoding: chunked"
ENDED_LENGTH = len(LAST_CHUNK_THEN_SMUGGLED)
# RFC 9112, 6.1: a transfer coding the server does not know "SHOULD" get
# 501. nginx answers so for any Transfer-Encoding but a bare "chunked"
# ("identity" is no coding any more); the daemon and the other proxies
# answer 400.
UNKNOWN_CODING = {"nginx": 501}

CASES = [
    Case(
        "length-and-chunked",
        subscribe_head(length(ENDED_LENGTH), CHUNKED),
        LAST_CHUNK_THEN_SMUGGLED,
    ),
    Case(
        "chunked-and-short-length",
        subscribe_head(CHUNKED, length(4)),
        b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
    ),
    Case(
        "two-lengths",
        subscribe_head(length(0), length(len(SMUGGLED))),
        SMUGGLED,
    ),
    Case(
        "two-lengths-in-one-field",
        subscribe_head(b"Content-Length: 0, %d" % len(SMUGGLED)),
        SMUGGLED,
    ),
    Case(
        "signed-length",
        subscribe_head(b"Content-Length: +%d" % len(SMUGGLED)),
        SMUGGLED,
    ),
    Case(
        "unknown-coding",
        subscribe_head(b"Transfer-Encoding: xchunked"),
        LAST_CHUNK_THEN_SMUGGLED,
        UNKNOWN_CODING,
    ),
    Case(
        "unknown-coding-and-length",
        subscribe_head(b"Transfer-Encoding: xchunked", length(len(SMUGGLED))),
        SMUGGLED,
        UNKNOWN_CODING,
    ),
    Case(
        "space-before-colon",
        subscribe_head(b"Transfer-Encoding : chunked", length(ENDED_LENGTH)),
        LAST_CHUNK_THEN_SMUGGLED,
    ),
    Case(
        "folded-coding",
        subscribe_head(b"Transfer-Encoding:\r\n chunked", length(ENDED_LENGTH)),
        LAST_CHUNK_THEN_SMUGGLED,
    ),
    Case(
        "tab-before-coding",
        subscribe_head(b"Transfer-Encoding:\tchunked", length(ENDED_LENGTH)),
        LAST_CHUNK_THEN_SMUGGLED,
        UNKNOWN_CODING,
    ),
    Case(
        "vertical-tab-before-coding",
        subscribe_head(b"Transfer-Encoding: \x0bchunked", length(ENDED_LENGTH)),
        LAST_CHUNK_THEN_SMUGGLED,
        UNKNOWN_CODING,
    ),
    Case(
        "uppercase-coding-and-length",
        subscribe_head(b"Transfer-Encoding: CHUNKED", length(ENDED_LENGTH)),
        LAST_CHUNK_THEN_SMUGGLED,
    ),
    Case(
        "chunked-then-identity",
        subscribe_head(b"Transfer-Encoding: chunked, identity"),
        LAST_CHUNK_THEN_SMUGGLED,
        UNKNOWN_CODING,
    ),
    Case(
        "chunked-twice",
        subscribe_head(CHUNKED, CHUNKED),
        LAST_CHUNK_THEN_SMUGGLED,
        # mod_proxy_http refuses "chunked, chunked" itself (AH01093), with
        # the status of a server error.
        {"apache": 500},
    ),
    Case(
        "bad-chunk-size-then-pipelined",
        subscribe_head(CHUNKED),
        b"zz\r\n\r\n" + SMUGGLED,
    ),
    Case(
        "bad-header-then-pipelined",
        raw_head(b"GET %s/healthz HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n"),
        SMUGGLED,
    ),
    Case(
        "bad-request-line-then-pipelined",
        raw_head(b"GET %s/healthz HTTP/1.1 extra\r\nHost: localhost\r\n"),
        SMUGGLED,
    ),
]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """The one daemon behind every target of this module."""
    with Daemon() as running:
        yield running


@pytest.fixture(scope="module", params=["direct", *(kind.name for kind in PROXIES)])
def target(
    request: pytest.FixtureRequest,
    daemon: Daemon,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    if request.param == "direct":
        yield Target("direct", daemon.port, "")
        return
    kind = next(kind for kind in PROXIES if kind.name == request.param)
    directory = tmp_path_factory.mktemp(kind.name)
    with running_proxy(kind, daemon, directory) as proxy:
        yield Target(kind.name, proxy.port, PREFIX)


def exchange(port: int, data: bytes, timeout: float) -> tuple[bytes, bool]:
    """Send ``data``; return what came back, and whether the peer closed."""
    received = b""
    deadline = time.monotonic() + timeout
    with connect(port) as sock:
        sock.sendall(data)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(
    daemon: Daemon, target: Target, case: Case
) -> None:
    before = daemon.stats()["publish_requests_total"]

    received, closed = exchange(target.port, case.request(target.prefix), 3 * UNIT)
    statuses = [int(status) for status in STATUS_LINE.findall(received)]

    assert statuses, f"no answer from {target.name}: {received!r}"
    assert statuses[0] == case.other_refusals.get(target.name, 400), received
    assert len(statuses) == 1, f"a pipelined request was answered: {received!r}"
    assert closed, f"{target.name} left the connection open: {received!r}"
    assert daemon.stats()["publish_requests_total"] == before


def test_the_smuggled_request_publishes_when_sent_on_its_own(daemon: Daemon) -> None:
    # Without this, a smuggled request that failed for its own reasons
    # would pass every test above.
    before = daemon.stats()["publish_requests_total"]
    with connect(daemon.port) as sock:
        sock.sendall(SMUGGLED)
        status, _, _ = read_head(sock)
    assert status == 204
    assert daemon.stats()["publish_requests_total"] == before + 1
