"""The benchmark suite runs: S1 against our daemon alone, with small numbers.

A smoke run, not a performance test: 500 subscribers on one channel and a
few 3-second steps, well under 30 seconds. It proves that the load
generator, the daemon and the report work together and that no
acknowledged message is lost; it prints the figures and asserts no
threshold on them (timing belongs to ``bench/run.py``, not to unit tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import UNIT

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_smoke_run_of_s1_against_ours_completes_without_loss(tmp_path: Path) -> None:
    figures = tmp_path / "s1.json"
    result = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "S1",
            "--server",
            "ours",
            "--smoke",
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
    assert outcome["scenario"] == "S1"
    assert outcome["steps"], "no step was measured"
    for step in outcome["steps"]:
        assert step["loss"] == 0, step
        assert step["acked"] == step["sent"] > 0, step
        assert step["delivered"] == step["expected"] > 0, step
    assert outcome["lost"] == 0
    assert "| S1 |" in result.stdout
