"""The results table: each figure for both servers, the ratio, the target.

Targets are those of issue 5. S1 over rpushd's SSE and WebSocket
transports (S1-sse, S1-websocket) has no target and no nchan figure: it is
recorded for comparison with S1. A target that compares with nchan reads
"n/a" when nchan was not run; a figure measured while the load generator
saturated its core does not count, and its target reads "not counted".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scenarios import TRANSPORTS, Outcome, Settings

Results = dict[tuple[str, str], Outcome]
"""Outcomes by (scenario, server)."""


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    figure: str
    ours: str
    nchan: str
    ratio: str
    target: str
    met: str


Builder = Callable[[Results, Settings], list[Row]]


def table(outcomes: Results, settings: Settings) -> str:
    """The markdown results table, then load generator CPU and notes."""
    rows = [row for build in _ROWS for row in build(outcomes, settings)]
    lines = [
        "| scenario | figure | ours | nchan | ours/nchan | target | met |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {r.scenario} | {r.figure} | {r.ours} | {r.nchan} | {r.ratio} "
        f"| {r.target} | {r.met} |"
        for r in rows
    ]
    lines += ["", *cpu_table(outcomes), "", *notes(outcomes)]
    return "\n".join(lines).rstrip() + "\n"


def cpu_table(outcomes: Results) -> list[str]:
    """CPU shares in each scenario's counted phases (highest of each)."""
    lines = [
        "CPU during the phases that count (share of one core, highest over "
        "them). The load generator saturates above 90 %, and its figures then "
        "do not count. The other two columns show how busy each core was "
        "beyond its own process: other processes on the machine, and kernel "
        "interrupt work (loopback networking) charged to no process. Stolen: "
        "the most the hypervisor took from either core.",
        "",
        "| scenario | server | load generator | server core, other load "
        "| load generator core, other load | stolen |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (scenario, server), outcome in sorted(outcomes.items()):
        flag = " (saturated)" if outcome.saturated else ""
        lines.append(
            f"| {scenario} | {server} | {outcome.loadgen_cpu:.0%}{flag} "
            f"| {outcome.other_server_core:.0%} | {outcome.other_loadgen_core:.0%} "
            f"| {outcome.stolen:.0%} |"
        )
    return lines


def notes(outcomes: Results) -> list[str]:
    lines = ["Notes:", ""]
    for (scenario, server), outcome in sorted(outcomes.items()):
        for note in outcome.notes:
            lines.append(f"- {scenario} {server}: {note}")
    return lines if len(lines) > 2 else []


# Formatting.


def _num(value: float | None, digits: int = 0, unit: str = "", none: str = "-") -> str:
    if value is None:
        return none
    return f"{value:,.{digits}f}{unit}"


def _ratio(ours: float | None, nchan: float | None, digits: int = 2) -> str:
    if ours is None or nchan is None or nchan == 0:
        return "-"
    return f"{ours / nchan:.{digits}f}x"


def _met(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[ok]


def _pair(outcomes: Results, scenario: str) -> tuple[Outcome | None, Outcome | None]:
    """Our outcome and nchan's for ``scenario``."""
    return outcomes.get((scenario, "ours")), outcomes.get((scenario, "nchan"))


def _figure(outcome: Outcome | None, key: str) -> Any:
    return None if outcome is None else outcome.figures.get(key)


# One builder per scenario.


def _throughput(scenario: str) -> Builder:
    def build(outcomes: Results, settings: Settings) -> list[Row]:
        ours, nchan = _pair(outcomes, scenario)
        if ours is None and nchan is None:
            return []
        variant = scenario in TRANSPORTS
        if scenario.startswith("S1"):
            label = f"1 channel x {settings.broadcast_subscribers:,} subscribers"
            if variant:
                label += f" over {TRANSPORTS[scenario]}"
        else:
            label = f"{settings.channels:,} channels x {settings.per_channel} subs"

        a, b = _figure(ours, "deliveries_per_s"), _figure(nchan, "deliveries_per_s")
        if variant:
            met = "-"
        elif a is None and b is None:
            met = _judge(False, ours, nchan) + " (neither held p99 < limit)"
        else:
            met = _judge(a is not None and (b is None or a >= 2.0 * b), ours, nchan)
        within = Row(
            scenario,
            f"{label}: max deliveries/s held {settings.step_secs:g} s, no loss, "
            f"p99 < {settings.p99_limit_ms:g} ms",
            _num(a, none="none") + _floor(ours),
            "not run" if variant else _num(b, none="none") + _floor(nchan),
            _ratio(a, b),
            "(recorded; S1 has the target)" if variant else ">= 2.0x nchan",
            met,
        )

        def held(outcome: Outcome | None) -> str:
            value = _figure(outcome, "held_deliveries_per_s")
            if outcome is None or value is None:
                return "-"
            return (
                f"{_num(value)} (p99 {_num(_figure(outcome, 'held_p99_ms'))} ms, "
                f"server CPU {_num(100 * _figure(outcome, 'held_server_cpu'))} %)"
            )

        c = _figure(ours, "held_deliveries_per_s")
        d = _figure(nchan, "held_deliveries_per_s")
        without = Row(
            scenario,
            f"{label}: max deliveries/s held {settings.step_secs:g} s, no loss, "
            "any latency (p99 at that rate)",
            held(ours),
            held(nchan),
            _ratio(c, d),
            "(context)",
            "-",
        )
        return [within, without]

    return build


def _floor(outcome: Outcome | None) -> str:
    return " (floor)" if outcome is not None and outcome.saturated else ""


def _judge(ok: bool, *compared: Outcome | None) -> str:
    """met / not met, or why the comparison does not count."""
    if any(o is None for o in compared):
        return "n/a (not run)"
    if any(o is not None and o.saturated for o in compared):
        return "not counted (load generator saturated)"
    return _met(ok)


def _memory(outcomes: Results, settings: Settings) -> list[Row]:
    ours, nchan = _pair(outcomes, "S3")
    if ours is None and nchan is None:
        return []
    a, b = _figure(ours, "kib_per_stream"), _figure(nchan, "kib_per_stream")
    if a is None:
        met = "n/a"
    elif nchan is None:
        met = _met(a <= 4.0) + " (4 KiB only; nchan not run)"
    else:
        met = _met(a <= 4.0 and b is not None and a <= b)
    return [
        Row(
            "S3",
            f"RSS growth per idle stream, {settings.idle_streams:,} streams",
            _num(a, 2, " KiB"),
            _num(b, 2, " KiB"),
            _ratio(a, b),
            "<= 4 KiB and <= nchan",
            met,
        )
    ]


def _storm(outcomes: Results, settings: Settings) -> list[Row]:
    ours, nchan = _pair(outcomes, "S4")
    if ours is None and nchan is None:
        return []

    def cell(outcome: Outcome | None) -> str:
        if outcome is None:
            return "-"
        f = outcome.figures
        return (
            f"{_num(f.get('last_ready_seconds'), 2, ' s')} "
            f"(p50 {_num(f.get('p50_ready_seconds'), 2, ' s')}), "
            f"{f.get('failed')} failed"
        )

    seconds = _figure(ours, "all_ready_seconds")
    ok = None if ours is None else seconds is not None and seconds <= 5.0
    return [
        Row(
            "S4",
            f"{settings.storm_clients:,} clients at once: seconds until the last "
            "has its first heartbeat (nchan: its 200 head)",
            cell(ours),
            cell(nchan),
            _ratio(
                _figure(ours, "last_ready_seconds"),
                _figure(nchan, "last_ready_seconds"),
            ),
            "all within 5 s, none failed",
            _judge(bool(ok), ours) if ours is not None else "n/a (not run)",
        )
    ]


def _ingest(outcomes: Results, settings: Settings) -> list[Row]:
    ours, nchan = _pair(outcomes, "S5")
    if ours is None and nchan is None:
        return []
    rows = []
    for connections in settings.ingest_connections:
        key = f"publishes_per_s_{connections}"
        a, b = _figure(ours, key), _figure(nchan, key)
        saturated = any(_figure(o, f"saturated_{connections}") for o in (ours, nchan))
        if ours is None or nchan is None:
            met = "n/a (not run)"
        elif saturated:
            met = "not counted (load generator saturated)"
        else:
            met = _met(a is not None and b is not None and a >= 1.5 * b)
        rows.append(
            Row(
                "S5",
                f"publishes/s acknowledged, {connections} keep-alive connection(s), "
                f"{settings.ingest_subscribers} subscribers",
                _ingest_cell(ours, connections),
                _ingest_cell(nchan, connections),
                _ratio(a, b),
                ">= 1.5x nchan",
                met,
            )
        )
    return rows


def _ingest_cell(outcome: Outcome | None, connections: int) -> str:
    value = _figure(outcome, f"publishes_per_s_{connections}")
    if outcome is None or value is None:
        return "-"
    cpu = _figure(outcome, f"server_cpu_{connections}")
    p50 = _figure(outcome, f"answer_p50_ms_{connections}")
    p99 = _figure(outcome, f"answer_p99_ms_{connections}")
    saturated = _figure(outcome, f"saturated_{connections}")
    return (
        f"{_num(value)} (server CPU {_num(100 * cpu)} %, answer p50 "
        f"{_num(p50, 2)} / p99 {_num(p99, 2)} ms)"
        + (" (load generator saturated)" if saturated else "")
    )


def _latency(outcomes: Results, settings: Settings) -> list[Row]:
    ours, nchan = _pair(outcomes, "S6")
    if ours is None and nchan is None:
        return []
    rows = []
    for share in (25, 75):
        rate = _figure(ours, f"rate_{share}") or _figure(nchan, f"rate_{share}")

        def cell(outcome: Outcome | None, share: int = share) -> str:
            if outcome is None or _figure(outcome, f"p99_{share}") is None:
                return "-"
            cell = " / ".join(
                _num(_figure(outcome, f"{k}_{share}"), 1)
                for k in ("p50", "p99", "p999")
            )
            if _figure(outcome, f"held_{share}") is False:
                cell += " (rate not held)"
            return cell

        a, b = _figure(ours, f"p99_{share}"), _figure(nchan, f"p99_{share}")
        ok: bool | None = None
        if a is not None:
            ok = (b is None or a <= b) and (share != 25 or a < 10.0)
        target = "p99 <= nchan" + (", < 10 ms" if share == 25 else "")
        met = _judge(bool(ok), ours, nchan) if ok is not None else "n/a"
        rows.append(
            Row(
                "S6",
                f"S1 at {share} % of our max ({_num(rate, 1)} publishes/s, "
                f"{_num(rate * settings.broadcast_subscribers if rate else None)} "
                "deliveries/s): p50 / p99 / p99.9 ms",
                cell(ours),
                cell(nchan),
                _ratio(a, b),
                target,
                met,
            )
        )
    return rows


def _idle_cpu(outcomes: Results, settings: Settings) -> list[Row]:
    ours, nchan = _pair(outcomes, "S7")
    if ours is None and nchan is None:
        return []
    a, b = _figure(ours, "server_cpu_percent"), _figure(nchan, "server_cpu_percent")
    return [
        Row(
            "S7",
            f"server CPU, {settings.idle_streams:,} idle streams, "
            f"{settings.idle_heartbeat_secs} s heartbeat (nchan: none), "
            f"{settings.idle_secs:g} s",
            _num(a, 2, " %"),
            _num(b, 2, " %"),
            _ratio(a, b),
            "< 5 % of a core",
            _met(a < 5.0) if a is not None else "n/a",
        )
    ]


def _loss(outcomes: Results, settings: Settings) -> list[Row]:
    totals: dict[str, int | None] = {"ours": None, "nchan": None}
    for (_scenario, server), outcome in outcomes.items():
        totals[server] = (totals[server] or 0) + outcome.lost
    ours = totals["ours"]
    return [
        Row(
            "all",
            "acknowledged deliveries lost, every step of every scenario "
            "(overload steps included)",
            _num(ours),
            _num(totals["nchan"]),
            "-",
            "0",
            _met(ours == 0) if ours is not None else "n/a",
        )
    ]


_ROWS: list[Builder] = [
    _throughput("S1"),
    *(_throughput(scenario) for scenario in TRANSPORTS),
    _throughput("S2"),
    _memory,
    _storm,
    _ingest,
    _latency,
    _idle_cpu,
    _loss,
]
