"""The benchmark suite runs: S1 against our daemon alone, with small numbers.

A smoke run, not a performance test: 500 subscribers on one channel and a
few short steps, about 30 seconds in all: S1 over the original stream with
3-second steps, then over Server-Sent Events and WebSocket with 1-second
steps. It proves that the load generator, the daemon and the report work
together and that no acknowledged message is lost; it prints the figures
and asserts no threshold on them (timing belongs to ``bench/run.py``, not
to unit tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import UNIT

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.mark.parametrize(
    ("transport", "scenario", "options"),
    [
        ("stream", "S1", []),
        ("sse", "S1-sse", ["--step-secs", "1"]),
        ("websocket", "S1-websocket", ["--step-secs", "1"]),
    ],
)
def test_smoke_run_of_s1_against_ours_completes_without_loss(
    tmp_path: Path, transport: str, scenario: str, options: list[str]
) -> None:
    figures = tmp_path / "s1.json"
    result = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "S1",
            "--server",
            "ours",
            "--transport",
            transport,
            "--smoke",
            *options,
            "--json",
            str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    print(result.stdout)
    print(result.stderr)
    assert result.returncode == 0, result.stderr

    (outcome,) = json.loads(figures.read_text())["outcomes"]
    assert outcome["scenario"] == scenario
    assert outcome["steps"], "no step was measured"
    for step in outcome["steps"]:
        assert step["loss"] == 0, step
        assert step["acked"] == step["sent"] > 0, step
        assert step["delivered"] == step["expected"] > 0, step
        assert step["latency_samples"] > 0, step
    assert outcome["lost"] == 0
    assert f"| {scenario} |" in result.stdout
