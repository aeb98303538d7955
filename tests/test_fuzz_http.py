"""The HTTP layer under raw-byte fuzzing, against one live daemon.

Hypothesis writes requests from the grammar in :mod:`fuzzing` (methods,
targets, versions, header lists, bodies, framings, chunk encodings, up to
three pipelined requests, random byte mutations) and sends each on a fresh
connection. Every answer must be well-formed HTTP with no 5xx and a JSON
error on every 4xx, and every connection must end within a bound. Between
requests, a message published to a watched stream must still arrive.
Afterwards the daemon must be alive and healthy, with a clean log and its
file descriptors back to where they started.

One daemon serves the whole module, for speed; the long version of this
run is ``bench/fuzz_live.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings

from fuzzing import (
    FUZZ_ENV,
    Sending,
    bad_log_lines,
    exchange,
    open_fds,
    problems,
    raw_exchanges,
    wait_for_fds,
)
from helpers import Daemon, Stream

# No generated request names this channel (see fuzzing.CHANNELS).
WATCHED = "watched-by-the-fuzz-test"


@dataclass
class Live:
    daemon: Daemon
    watcher: Stream
    baseline_fds: int
    published: Iterator[int] = field(default_factory=itertools.count)

    @property
    def pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid

    def still_delivers(self) -> None:
        number = next(self.published)
        reply = self.daemon.publish(WATCHED, {"n": number})
        assert reply.status == 204, reply
        assert self.watcher.next_message() == {"n": number}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with Daemon(FUZZ_ENV) as daemon:
        watcher = daemon.subscribe(WATCHED)
        try:
            assert daemon.process is not None
            yield Live(daemon, watcher, open_fds(daemon.process.pid))
        finally:
            watcher.close()


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sending=raw_exchanges())
def test_raw_requests_get_well_formed_answers_and_no_hang(
    live: Live, sending: Sending
) -> None:
    outcome = exchange(live.daemon.port, sending)

    # Shown by --hypothesis-show-statistics: what the fuzz reached.
    event(f"first answer {outcome.received[9:12].decode('latin-1') or 'none'}")
    event(f"connection {outcome.ended}")
    found = problems(outcome)
    assert not found, (found, outcome)
    assert live.daemon.process is not None and live.daemon.process.poll() is None
    live.still_delivers()


def test_daemon_is_healthy_after_the_fuzz(live: Live) -> None:
    assert live.daemon.process is not None and live.daemon.process.poll() is None
    assert live.daemon.request("GET", "/healthz").status == 200
    live.still_delivers()

    # Every connection the fuzz opened is gone once the count is back.
    count = wait_for_fds(live.pid, live.baseline_fds)
    assert count <= live.baseline_fds, f"{count} fds open, {live.baseline_fds} before"
    assert live.daemon.stats()["active_stream_connections"] == 1
    assert not bad_log_lines(live.daemon.lines), live.daemon.log_text()[-5000:]
