"""Fixtures, and the strict mode in which a skipped test fails the run."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from helpers import Daemon

STRICT = os.environ.get("RPUSHD_TEST_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, and RPUSHD_TEST_STRICT=1 forbids skips: {report.longrepr}"
        )


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    """A running daemon with default settings and a 1 s heartbeat."""
    with Daemon(heartbeat_secs="1") as running:
        yield running
