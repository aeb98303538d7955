"""The shipped nginx snippet, served by a real nginx in front of the daemon.

nginx runs in the foreground from a temporary prefix (tests/proxies.py),
with a generated nginx.conf whose only server includes
deploy/nginx-location.conf, its daemon address rewritten to the test
daemon's. nginx is required: CI installs it, and a missing nginx fails
these tests rather than skipping them, so that the snippet is never shipped
untested. test_proxies.py proves what every shipped proxy configuration
must do, nginx's included (the transports of docs/STREAMS.md, heartbeats
against timeouts, refusals); this module adds what is particular to nginx.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import UNIT, Daemon, make_token, request
from proxies import PREFIX, Nginx, Proxy, running_proxy


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon for the module's nginx, with a 1 s heartbeat."""
    with Daemon(heartbeat_secs="1") as running:
        yield running


@pytest.fixture(scope="module")
def nginx(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """nginx in front of the module's ``daemon``."""
    with running_proxy(Nginx, daemon, tmp_path_factory.mktemp("nginx")) as proxy:
        yield proxy


def test_dotted_channel_reaches_the_daemon_not_the_site(
    daemon: Daemon, nginx: Proxy
) -> None:
    stream = nginx.open_stream("index.php")
    try:
        assert stream.status == 200, stream.head
        assert stream.next_frame(timeout=UNIT) == b""
        channels = {item["name"]: item for item in daemon.stats()["channels"]}
        assert channels["index.php"]["subscribers"] == 1
    finally:
        stream.close()


def test_oversized_subscribe_body_is_refused_by_nginx(nginx: Proxy) -> None:
    body = {"token": make_token("room-1"), "pad": "x" * 17 * 1024}
    reply = request(nginx.port, "POST", f"{PREFIX}/api/stream/room-1", body)
    assert reply.status == 413
    # nginx's own refusal: the daemon answers its errors in JSON.
    assert "json" not in reply.headers.get("Content-Type", "")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/"),
        ("POST", "/api/stream/"),
        ("POST", "/api/stream/room-1/more"),
        ("GET", "/healthz/more"),
        ("POST", "/api/publish.php"),
        ("GET", "/metrics"),
    ],
)
def test_other_paths_under_the_prefix_answer_404(
    nginx: Proxy, method: str, path: str
) -> None:
    body = {"token": make_token("room-1")} if method == "POST" else None
    assert request(nginx.port, method, PREFIX + path, body).status == 404
