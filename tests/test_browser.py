"""The browser client, clients/js/rpushd.js, in a real headless Chromium.

Each test serves a site from nginx the way production does: the page and
the module on one origin, the daemon's public endpoints proxied under
/push-daemon/ by the shipped snippet, so the browser makes same-origin
requests and no CORS header is involved. Playwright drives Chromium; the
test publishes to the daemon directly and watches what the page's
callbacks recorded. Tokens come from the test through an exposed function,
fresh for every connection, as an application's token endpoint would mint
them.

Chromium (Debian's ``chromium``), Playwright for Python, node and nginx
are required: a missing one fails these tests with instructions, never
skips them. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import UNIT, Daemon, Nginx, free_port, make_token, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "clients" / "js"
SNIPPET = ROOT / "deploy" / "nginx-location.conf"
SHIPPED_ADDRESS = "127.0.0.1:45831"
CHROMIUM = "/usr/bin/chromium"
PREFIX = "/push-daemon"
TRANSPORTS = ["stream", "sse", "websocket"]

# The site: the shipped nginx snippet (deploy/nginx-location.conf, pointed
# at the test daemon) for the daemon's endpoints under /push-daemon/, the
# client module under /js/, and a blank page at /. gzip is on for every
# type, as a site may have it: the snippet must keep streams uncompressed.
SITE = """
        include {snippet};

        location /js/ {{
            alias {clients}/;
            types {{
                text/javascript js;
                text/html html;
            }}
        }}
        location = /favicon.ico {{
            return 204;
        }}
        location = / {{
            default_type text/html;
            return 200 "<!doctype html><title>rpushd test page</title>";
        }}
"""
SITE_HTTP = """
    gzip on;
    gzip_types *;
    gzip_min_length 1;
"""

# Creates window.subs[name]: a subscription whose callbacks record into
# `seen`. Retries are quick so that reconnections take milliseconds.
SUBSCRIBE = """
async ({ name, transport, channels, options }) => {
  const { subscribe } = await import("/js/rpushd.js");
  const seen = { messages: [], gaps: [], statuses: [], events: [], tokens: 0 };
  const subscription = subscribe({
    baseUrl: "/push-daemon",
    channels,
    transport,
    initialDelay: 50,
    maxDelay: 500,
    token: async (channel) => {
      seen.tokens += 1;
      return await window.mintToken(channel);
    },
    onMessage: (message, { channel, id }) => {
      seen.messages.push({ channel, id, message });
      seen.events.push(["message", channel, id]);
    },
    onGap: ({ channel, reason }) => {
      seen.gaps.push({ channel, reason });
      seen.events.push(["gap", channel, reason]);
    },
    onStatus: (status) => seen.statuses.push(status),
    ...options,
  });
  window.subs = window.subs ?? {};
  window.subs[name] = { subscription, seen };
}
"""


# Fixtures.


def _playwright() -> Any:
    """The sync_playwright entry point; fail with instructions without it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is required for the browser tests: "
            "pip install playwright (never `playwright install`: the tests "
            f"use Debian's Chromium at {CHROMIUM})",
            pytrace=False,
        )
    return sync_playwright


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the module; each test gets its own context."""
    sync_playwright = _playwright()
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is required for the browser tests and {CHROMIUM} is "
            "missing; install it (apt-get install chromium)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


class Site:
    """A daemon on a fixed port (so that it can restart) behind nginx."""

    def __init__(self, prefix: Path, **settings: str) -> None:
        port = free_port()
        self.settings = {
            "heartbeat_secs": "1",
            "drain_secs": "0",
            **settings,
            "listen": f"127.0.0.1:{port}",
        }
        self.daemon = Daemon(**self.settings).start()
        snippet = prefix / "rpushd.conf"
        shipped = SNIPPET.read_text()
        assert SHIPPED_ADDRESS in shipped, "the snippet must proxy to the default"
        snippet.write_text(shipped.replace(SHIPPED_ADDRESS, f"127.0.0.1:{port}"))
        server = SITE.format(snippet=snippet, clients=CLIENTS)
        self.nginx = Nginx(prefix, server=server, http=SITE_HTTP).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}"

    def publish(self, channel: str, message: Any) -> None:
        reply = self.daemon.publish(channel, message)
        assert reply.status == 204, reply

    def restart_daemon(self) -> None:
        """Stop the daemon and start a new run (a new epoch) on its port."""
        assert self.daemon.stop() == 0, self.daemon.log_text()
        self.daemon = Daemon(**self.settings).start()

    def close(self) -> None:
        self.nginx.stop()
        self.daemon.kill()


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """The site; parametrize it indirectly with daemon settings."""
    running = Site(tmp_path, **getattr(request, "param", {}))
    try:
        yield running
    finally:
        running.close()
        # Shown by pytest only when the test failed.
        print("daemon log:\n" + running.daemon.log_text()[-4000:])
        print("nginx error log:\n" + running.nginx.log_text()[-4000:])


class Browser:
    """The test page, and the subscriptions it holds."""

    def __init__(self, page: Any, site: Site) -> None:
        self.page = page
        self.site = site
        self.console: list[str] = []
        self.token_ttl: Callable[[], int] = lambda: 3600
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(f"error: {error}"))
        page.expose_function(
            "mintToken", lambda channel: make_token(channel, ttl=self.token_ttl())
        )
        page.goto(site.url + "/")

    def subscribe(
        self,
        transport: str,
        channels: list[str],
        name: str = "main",
        **options: Any,
    ) -> None:
        """Subscribe and wait until the daemon said hello."""
        arguments = {
            "name": name,
            "transport": transport,
            "channels": channels,
            "options": options,
        }
        self.page.evaluate(SUBSCRIBE, arguments)
        self.wait_for(f"subs.{name}.subscription.status === 'open'", "hello")

    def seen(self, name: str = "main") -> dict[str, Any]:
        return dict(self.page.evaluate(f"subs.{name}.seen"))

    def messages(self, name: str = "main") -> list[tuple[str, Any]]:
        """(channel, message) pairs in the order they were delivered."""
        seen = self.seen(name)["messages"]
        return [(item["channel"], item["message"]) for item in seen]

    def wait_for(self, expression: str, what: str, timeout: float = 5 * UNIT) -> None:
        """Wait until ``expression`` holds in the page, polling it."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(expression, timeout=timeout * 1000, polling=20)
        except PlaywrightTimeout:
            state = self.page.evaluate(
                "JSON.stringify(Object.fromEntries(Object.entries(window.subs ?? {})"
                ".map(([name, sub]) => [name, sub.seen])))"
            )
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what} ({expression})\n"
                f"page state: {state}\nconsole: {self.console}"
            ) from None

    def wait_for_messages(self, count: int, name: str = "main") -> None:
        self.wait_for(
            f"subs.{name}.seen.messages.length >= {count}", f"{count} messages"
        )


@pytest.fixture
def browser(chromium: Any, site: Site) -> Iterator[Browser]:
    context = chromium.new_context()
    try:
        yield Browser(context.new_page(), site)
    finally:
        context.close()


def assert_ids_increase(seen: dict[str, Any]) -> None:
    sequence = [int(item["id"].rsplit("-", 1)[1]) for item in seen["messages"]]
    assert sequence == sorted(set(sequence)), sequence


# Delivery.


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_receives_messages_of_both_channels_in_order(
    site: Site, browser: Browser, transport: str
) -> None:
    browser.subscribe(transport, ["room-a", "room-b"])
    site.publish("room-a", {"n": 1})
    site.publish("room-b", {"n": 2, "text": "héllo ✓"})
    site.publish("room-a", {"n": 3})
    site.publish("elsewhere", {"n": 0})
    browser.wait_for_messages(3)

    assert browser.messages() == [
        ("room-a", {"n": 1}),
        ("room-b", {"n": 2, "text": "héllo ✓"}),
        ("room-a", {"n": 3}),
    ]
    seen = browser.seen()
    assert_ids_increase(seen)
    assert seen["gaps"] == []
    assert seen["statuses"] == ["connecting", "open"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_resumes_where_it_was_cut_off(
    site: Site, browser: Browser, transport: str
) -> None:
    browser.subscribe(transport, ["room-a", "room-b"])
    site.publish("room-a", "a1")
    site.publish("room-b", "b1")
    browser.wait_for_messages(2)

    # The page loses its connection; what is published meanwhile waits in
    # the daemon's history, and comes with the resumed stream.
    site.nginx.stop()
    browser.wait_for("subs.main.subscription.status !== 'open'", "the cut noticed")
    site.publish("room-a", "a2")
    site.publish("room-b", "b2")
    site.publish("room-a", "a3")
    site.nginx.restart()
    browser.wait_for_messages(5)
    site.publish("room-b", "b3")
    browser.wait_for_messages(6)

    assert browser.messages() == [
        ("room-a", "a1"),
        ("room-b", "b1"),
        ("room-a", "a2"),
        ("room-b", "b2"),
        ("room-a", "a3"),
        ("room-b", "b3"),
    ]
    seen = browser.seen()
    assert_ids_increase(seen)
    assert seen["gaps"] == []
    assert seen["tokens"] >= 4, "every connection asks for fresh tokens"


def test_silent_stream_is_abandoned_and_resumed(site: Site, browser: Browser) -> None:
    # Frozen, nginx keeps the connection open and silent: only the missing
    # heartbeats (1 s here) can tell the page that it is dead.
    browser.subscribe("stream", ["room-a"])
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)

    site.nginx.pause()
    try:
        site.publish("room-a", "a2")
        browser.wait_for("subs.main.subscription.status !== 'open'", "silence noticed")
    finally:
        site.nginx.resume()
    browser.wait_for("subs.main.subscription.status === 'open'", "a new stream")
    site.publish("room-a", "a3")
    browser.wait_for_messages(3)

    assert browser.messages() == [("room-a", "a1"), ("room-a", "a2"), ("room-a", "a3")]


# Gaps.


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_is_told_of_a_gap_after_a_daemon_restart(
    site: Site, browser: Browser, transport: str
) -> None:
    browser.subscribe(transport, ["room-a", "room-b"])
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)

    site.restart_daemon()
    browser.wait_for("subs.main.seen.gaps.length >= 2", "two gaps")
    site.publish("room-a", "a2")
    browser.wait_for_messages(2)

    seen = browser.seen()
    # a1, then a gap per channel (in either order) before any new message.
    assert sorted(map(tuple, seen["events"][1:3])) == [
        ("gap", "room-a", "other_epoch"),
        ("gap", "room-b", "other_epoch"),
    ]
    assert browser.messages() == [("room-a", "a1"), ("room-a", "a2")]
    first, second = (item["id"] for item in seen["messages"])
    assert first.split("-")[0] != second.split("-")[0], "a new epoch"
    assert len(seen["gaps"]) == 2


@pytest.mark.parametrize("site", [{"history_size": "2"}], indirect=True)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_is_told_of_a_gap_when_history_no_longer_holds_its_place(
    site: Site, browser: Browser, transport: str
) -> None:
    browser.subscribe(transport, ["room-a", "room-b"])
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)

    site.nginx.stop()
    browser.wait_for("subs.main.subscription.status !== 'open'", "the cut noticed")
    for n in range(2, 6):
        site.publish("room-a", f"a{n}")
    site.nginx.restart()
    browser.wait_for_messages(3)

    seen = browser.seen()
    # The gap, then what the channel still holds; room-b missed nothing.
    assert [tuple(event) for event in seen["events"][1:]] == [
        ("gap", "room-a", "too_old"),
        ("message", "room-a", seen["messages"][1]["id"]),
        ("message", "room-a", seen["messages"][2]["id"]),
    ]
    assert browser.messages() == [("room-a", "a1"), ("room-a", "a4"), ("room-a", "a5")]


# Tokens and closing.


@pytest.mark.parametrize("site", [{"enforce_token_expiry": "1"}], indirect=True)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_expired_token_is_replaced_without_losing_messages(
    site: Site, browser: Browser, transport: str
) -> None:
    # The first connection's token runs out within two seconds; the daemon
    # then ends the stream, and the page comes back with a fresh token.
    ttls = iter([1])
    browser.token_ttl = lambda: next(ttls, 3600)
    browser.subscribe(transport, ["room-a"])
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)
    browser.wait_for("subs.main.seen.tokens >= 2", "a fresh token")
    browser.wait_for("subs.main.subscription.status === 'open'", "a new stream")
    site.publish("room-a", "a2")
    browser.wait_for_messages(2)

    assert browser.messages() == [("room-a", "a1"), ("room-a", "a2")]
    seen = browser.seen()
    assert seen["gaps"] == []
    assert seen["statuses"][-1] == "open"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_token_is_retried_with_a_fresh_one(
    site: Site, browser: Browser, transport: str
) -> None:
    # An expired token: 401 for a request, 4001 for a WebSocket, and for a
    # bare EventSource the end (it never retries after a 401).
    ttls = iter([-60])
    browser.token_ttl = lambda: next(ttls, 3600)
    browser.subscribe(transport, ["room-a"])
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)

    seen = browser.seen()
    assert seen["statuses"] == ["connecting", "waiting", "connecting", "open"]
    assert seen["tokens"] == 2
    assert browser.messages() == [("room-a", "a1")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_stops_delivery_and_callbacks(
    site: Site, browser: Browser, transport: str
) -> None:
    browser.subscribe(transport, ["room-a"])
    browser.subscribe(transport, ["room-a"], name="witness")
    site.publish("room-a", "a1")
    browser.wait_for_messages(1)
    browser.wait_for_messages(1, name="witness")

    browser.page.evaluate("subs.main.subscription.close()")
    wait_until(
        lambda: site.daemon.stats()["active_stream_connections"] == 1,
        what="the closed subscription's connection to end",
    )
    before = browser.seen()
    site.publish("room-a", "a2")
    browser.wait_for_messages(2, name="witness")

    assert browser.seen() == before
    assert browser.page.evaluate("subs.main.subscription.status") == "closed"


# The demo page and the pure logic.


def test_demo_page_shows_messages_as_they_arrive(site: Site, browser: Browser) -> None:
    query = f"channel=demo&token={make_token('demo')}&base={PREFIX}"
    browser.page.goto(f"{site.url}/js/demo.html?{query}")
    status = browser.page.locator("#status")
    status.filter(has_text="open").wait_for(timeout=5000 * UNIT)
    site.publish("demo", {"text": "hello, demo"})
    line = browser.page.locator("#log li").first
    line.filter(has_text="hello, demo").wait_for(timeout=5000 * UNIT)
    assert "demo" in line.inner_text()
    assert not [text for text in browser.console if text.startswith("error")]


def test_client_unit_tests_pass_under_node() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required to run clients/js/rpushd.test.js", pytrace=False)
    result = subprocess.run(
        [node, "--test", "rpushd.test.js"],
        cwd=CLIENTS,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in summary, summary
