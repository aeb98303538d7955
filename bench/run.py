"""Run the benchmark of issue 5, rpushd against nchan, and print the table.

    python bench/run.py all                         every scenario, both servers
    python bench/run.py S1 --server ours            one scenario, one server
    python bench/run.py S1 --server ours --smoke    small numbers, short steps
    python bench/run.py S1 --server ours --transport sse    S1 over SSE
    python bench/run.py S1-websocket                S1 over WebSocket (ours)
    python bench/run.py all --report bench/RESULTS.md

Each server under test runs pinned to core 0 and this process (the load
generator) to core 1. nchan is installed with apt-get when missing. The
markdown table goes to stdout, progress to stderr; ``--json`` also writes
every figure and step, ``--report`` a results page with the command, date
and machine.

``all`` includes S1-sse and S1-websocket, S1 over rpushd's Server-Sent
Events and WebSocket transports; nchan is not run in those two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from loadgen import raise_fd_limit
from report import table
from scenarios import SCENARIOS, SERVERS, TRANSPORTS, Outcome, Settings, say
from servers import (
    LOADGEN_CORE,
    SERVER_CORE,
    ServerError,
    can_pin,
    ensure_nchan,
    versions,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="rpushd benchmark suite (issue 5): ours against nchan"
    )
    parser.add_argument(
        "scenarios",
        nargs="+",
        metavar="SCENARIO",
        help="all, or one or more of " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--server", choices=("ours", "nchan", "both"), default="both")
    parser.add_argument(
        "--transport",
        choices=("stream", *TRANSPORTS.values()),
        default="stream",
        help="rpushd's subscriber transport for S1 (sse, websocket: S1-sse, "
        "S1-websocket); stream, the original, by default",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="small numbers and 3 s steps"
    )
    parser.add_argument("--step-secs", type=float, help="seconds per measured step")
    parser.add_argument(
        "--s1-rate",
        type=float,
        help="our S1 maximum in publishes/s, for S6 run without S1",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--report", type=Path, help="write a results page here")
    args = parser.parse_args(argv)

    known = {name.upper(): name for name in SCENARIOS}
    wanted = [name.upper() for name in args.scenarios]
    if "ALL" in wanted:
        wanted = list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        parser.error("unknown scenario: " + ", ".join(unknown))
    names = [known[name] for name in wanted]
    if args.transport != "stream":
        if names != ["S1"]:
            parser.error("--transport applies to S1 alone")
        names = [f"S1-{args.transport}"]
    args.scenarios = names
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = Settings.smoke() if args.smoke else Settings()
    if args.step_secs:
        settings = dataclasses.replace(settings, step_secs=args.step_secs)
    servers = SERVERS if args.server == "both" else (args.server,)

    limit = raise_fd_limit()
    if can_pin():
        os.sched_setaffinity(0, {LOADGEN_CORE})
        pinning = f"server on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}"
    else:
        pinning = "not pinned (fewer than two cores available)"
    say(f"open-file limit {limit}; {pinning}")
    if "nchan" in servers:
        ensure_nchan()

    context: dict[str, object] = {}
    if args.s1_rate:
        context["s1_ours_rate"] = args.s1_rate
    outcomes: dict[tuple[str, str], Outcome] = {}
    crashed = False
    started = time.monotonic()
    for scenario in args.scenarios:
        for server in servers:
            if scenario in TRANSPORTS and server != "ours":
                say(f"== {scenario} {server}: not run (rpushd's transports only)")
                continue
            say(f"== {scenario} {server}")
            try:
                outcome = SCENARIOS[scenario](server, settings, context)
            except (ServerError, OSError) as exc:
                crashed = True
                outcome = Outcome(scenario, server, notes=[f"did not run: {exc}"])
                say(f"  failed: {exc}")
            outcomes[(scenario, server)] = outcome
    for extra in context.get("extra", []):  # type: ignore[attr-defined]
        outcomes.setdefault((extra.scenario, extra.server), extra)
    minutes = (time.monotonic() - started) / 60

    text = table(outcomes, settings)
    print(text)
    say(f"finished in {minutes:.1f} min")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": dataclasses.asdict(settings),
                    "outcomes": [dataclasses.asdict(o) for o in outcomes.values()],
                },
                indent=1,
            )
        )
    if args.report:
        args.report.write_text(report_page(argv, text, pinning, minutes, settings))
    return 1 if crashed else 0


def report_page(
    argv: list[str], text: str, pinning: str, minutes: float, settings: Settings
) -> str:
    """A results page: the command, date, machine, method, then the table."""
    command = "python bench/run.py " + shlex.join(argv)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results (issue 5): rpushd against nchan",
        "",
        f"Command: `{command}` (interpreter `{sys.executable}`), "
        f"run {date}, {minutes:.0f} minutes.",
        "",
        "Machine:",
        "",
        *(f"- {item}" for item in machine(pinning)),
        "",
        "Method:",
        "",
        *(f"- {item}" for item in method(settings)),
        "",
        "## Results",
        "",
        text,
        "## Analysis",
        "",
        "Not written yet.",
        "",
    ]
    return "\n".join(lines)


def method(settings: Settings) -> list[str]:
    """How the figures were taken, in a few lines."""
    return [
        "messages: 100-byte JSON objects carrying their publish time, the "
        "same bytes for both servers; publishes over keep-alive HTTP/1.1 "
        "connections, one request in flight on each: "
        f"{settings.broadcast_publishers} in S1 and S6, "
        f"{settings.channels_publishers} in S2",
        "deliveries are counted on every stream, without parsing, as "
        "occurrences of a marker every message starts with, reading each "
        f"stream every {settings.bulk_interval:g} s so that one read returns "
        f"several messages; 1 stream in {settings.sample_every} (at least "
        f"{settings.min_samples}; 2 of the {settings.ingest_subscribers} in "
        "S5) is read at once and decodes every chunk (S1-sse, S1-websocket: "
        "every event or frame, and its envelope): latency, order and "
        "duplicates come from those",
        "loss: acknowledged publishes x streams of their channel - "
        "deliveries, counted after the step drains (until all arrived, or "
        f"none for 1 s, at most {settings.drain_limit:g} s)",
        f"S1/S2: {settings.step_secs:g} s steps, rates x{settings.factor:g} "
        f"from the start rate until one fails, then {settings.bisections} "
        "geometric bisections; a step fails on loss, a failed publish, a "
        "lost stream, the schedule missed by over 1 %, or the load "
        "generator above "
        f"{settings.saturated_above:.0%} of its core; p99 is judged apart",
        "a step is cut short once publishers fall 2 s behind schedule or a "
        "sampled message takes over 2 s",
        f"S3/S7: {settings.idle_streams:,} streams, {settings.idle_per_channel} "
        f"per channel; S4: {settings.storm_clients:,} connects fired at once, "
        f"{settings.idle_per_channel} per channel; each scenario starts a fresh "
        "server and first checks that one message reaches one subscriber",
    ]


def machine(pinning: str) -> list[str]:
    """What the results were measured on."""
    model = "unknown"
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    found = versions()
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        f"{_run(['nproc', '--all']).strip()} cores (`nproc --all`), {model}",
        f"Linux {platform.release()}",
        f"Python {found.get('python')}, uvloop {found.get('uvloop')}",
        f"nginx {found.get('nginx', 'absent')}, "
        f"libnginx-mod-nchan {found.get('nchan', 'absent')}",
        f"rpushd {rpushd_source()}",
        f"pinning: {pinning}",
        f"open files per process {soft}/{hard}; net.core.somaxconn {somaxconn} "
        "(caps both servers' listen backlog)",
    ]


def rpushd_source() -> str:
    """Which rpushd ran: its directory, and its commit when in a git tree."""
    import rpushd

    where = Path(rpushd.__file__).resolve().parent
    commit = _run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"]).strip()
    if not commit:
        return f"{rpushd.__version__} from {where}"
    dirty = _run(["git", "-C", str(where), "status", "--porcelain", "--", "."])
    state = " with uncommitted changes" if dirty.strip() else ""
    return f"{rpushd.__version__} from {where}, commit {commit}{state}"


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True).stdout
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
