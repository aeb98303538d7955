"""The seven scenarios of the benchmark, each run against one server.

S1 also runs over rpushd's other transports, Server-Sent Events and
WebSocket, as S1-sse and S1-websocket (rpushd only).

Every scenario starts a fresh server, checks that it delivers, drives it
with a :class:`loadgen.LoadGenerator`, stops it and returns an
:class:`Outcome`: its figures, the load generator's own CPU use, what was
lost, and notes on anything odd (failed connections, server log warnings).

S1 and S2 search for the highest publish rate a server holds for a whole
step: no loss, no error, the schedule kept and the load generator below
saturation. Rates grow geometrically until a step fails, then the interval
between the last good and the first bad rate is bisected. Two figures come
out: the highest rate held whatever the latency, and the highest whose p99
was also under the limit (the issue's figure).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from loadgen import LoadGenerator, OpenResult, StepResult, Usage
from servers import (
    LOADGEN_CORE,
    SERVER_CORE,
    Server,
    check_delivery,
    start_nchan,
    start_rpushd,
)

SERVERS = ("ours", "nchan")
TRANSPORTS = {"S1-sse": "sse", "S1-websocket": "websocket"}
"""The S1 variants over rpushd's other transports; nchan is not run in them."""
LATENCY_PROBLEM = "p99 "


@dataclass(frozen=True)
class Settings:
    """The sizes and durations of a run; :meth:`smoke` shrinks them."""

    broadcast_subscribers: int = 10_000
    channels: int = 1_000
    per_channel: int = 10
    idle_streams: int = 15_000
    idle_per_channel: int = 10
    storm_clients: int = 15_000
    ingest_subscribers: int = 10
    step_secs: float = 20.0
    ingest_secs: float = 10.0
    idle_secs: float = 20.0
    settle_secs: float = 3.0
    broadcast_start_rate: float = 5.0
    channels_start_rate: float = 1_000.0
    factor: float = 2.0
    bisections: int = 3
    max_steps: int = 12
    broadcast_publishers: int = 4
    channels_publishers: int = 16
    ingest_connections: tuple[int, ...] = (1, 8)
    sample_every: int = 50
    min_samples: int = 20
    p99_limit_ms: float = 100.0
    saturated_above: float = 0.90
    bulk_interval: float = 0.1
    open_in_flight: int = 256
    open_timeout: float = 120.0
    storm_timeout: float = 30.0
    drain_limit: float = 30.0
    heartbeat_secs: int = 15
    idle_heartbeat_secs: int = 1

    @classmethod
    def smoke(cls) -> Settings:
        """Small numbers for a run of well under a minute per scenario."""
        return cls(
            broadcast_subscribers=500,
            channels=50,
            idle_streams=500,
            storm_clients=500,
            step_secs=3.0,
            ingest_secs=3.0,
            idle_secs=3.0,
            settle_secs=1.0,
            broadcast_start_rate=20.0,
            channels_start_rate=200.0,
            bisections=0,
            max_steps=3,
            open_timeout=20.0,
            storm_timeout=20.0,
            drain_limit=10.0,
        )


@dataclass
class Outcome:
    """What one scenario measured on one server."""

    scenario: str
    server: str
    figures: dict[str, Any] = field(default_factory=dict)
    loadgen_cpu: float = 0.0
    other_server_core: float = 0.0
    other_loadgen_core: float = 0.0
    stolen: float = 0.0
    saturated: bool = False
    lost: int = 0
    notes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def count_cpu(self, usage: Usage, settings: Settings) -> None:
        """Record the CPU shares of a phase that counts.

        Besides the load generator's own share, keep how busy each of the
        two cores was beyond its own process: other processes on this
        machine, and interrupt work charged to no process.
        """
        self.loadgen_cpu = max(self.loadgen_cpu, usage.loadgen)
        if usage.loadgen > settings.saturated_above:
            self.saturated = True
        server_core = usage.cores.get(SERVER_CORE, 0.0) - usage.server
        loadgen_core = usage.cores.get(LOADGEN_CORE, 0.0) - usage.loadgen
        self.other_server_core = max(self.other_server_core, server_core)
        self.other_loadgen_core = max(self.other_loadgen_core, loadgen_core)
        self.stolen = max(self.stolen, *usage.stolen.values(), 0.0)


def say(text: str) -> None:
    """Progress, on stderr so that the table alone goes to stdout."""
    print(text, file=sys.stderr, flush=True)


# Running a server for one scenario.


@contextmanager
def running(
    name: str, outcome: Outcome, *, heartbeat_secs: int, transport: str = "stream"
) -> Iterator[Server]:
    """A fresh, verified server; its log warnings become notes at the end.

    ``transport`` is the one rpushd's subscribers use (nchan has one).
    """
    if name == "ours":
        server = start_rpushd(heartbeat_secs, transport)
    else:
        server = start_nchan()
    try:
        check_delivery(server)
        yield server
    finally:
        status = server.process.poll()
        if status is not None:
            outcome.notes.append(f"server exited during the run (status {status})")
        words: tuple[str, ...] = (" WARNING ", " ERROR ", "Traceback")
        if name == "nchan":
            words = ("[warn]", "[error]", "[crit]", "[alert]", "[emerg]")
        lines = server.log_lines(*words)
        if lines:
            outcome.notes.append(
                f"{len(lines)} warning/error lines in the server log, "
                f"first: {lines[0][:200]}"
            )
        server.stop()


def generator(server: Server, channels: list[str], settings: Settings) -> LoadGenerator:
    """A load generator for ``server``, knowing ``channels`` by index."""
    return LoadGenerator(
        server.dialect,
        server.port,
        channels,
        token=server.token,
        server_cpu=server.cpu_seconds,
        bulk_interval=settings.bulk_interval,
    )


def open_streams(
    lg: LoadGenerator,
    counts: list[int],
    settings: Settings,
    outcome: Outcome,
    *,
    all_at_once: bool = False,
) -> OpenResult:
    """Open ``counts[i]`` streams on channel ``i``, interleaving channels."""
    order = [
        channel
        for round_ in range(max(counts, default=0))
        for channel, count in enumerate(counts)
        if round_ < count
    ]
    result = lg.open_streams(
        order,
        sample_every=settings.sample_every,
        min_samples=settings.min_samples,
        in_flight=len(order) if all_at_once else settings.open_in_flight,
        timeout=settings.storm_timeout if all_at_once else settings.open_timeout,
    )
    if result.failed:
        outcome.notes.append(
            f"{result.failed} of {result.requested} streams failed to open: "
            + ", ".join(f"{n} {why}" for why, n in result.failures.most_common(3))
        )
    return result


def reopen_lost(
    lg: LoadGenerator, wanted: list[int], settings: Settings, outcome: Outcome
) -> None:
    """Replace streams that a step lost, so the next step has them all."""
    live = lg.live_subscribers()
    missing = [max(0, want - have) for want, have in zip(wanted, live, strict=True)]
    if sum(missing):
        outcome.notes.append(f"reopened {sum(missing)} lost streams between steps")
        open_streams(lg, missing, settings, outcome)


# Judging a step.


def step_problems(step: StepResult, settings: Settings) -> list[str]:
    """Why a step does not count as the rate held; empty when it does."""
    problems = []
    if step.aborted:
        problems.append("cut short: " + step.aborted)
    if step.loss > 0:
        problems.append(f"lost {step.loss} deliveries")
    if step.loss < 0:
        problems.append(f"{-step.loss} unexpected extra deliveries")
    if step.publish_errors:
        problems.append(f"{step.publish_errors} publishes failed")
    if step.disconnects:
        problems.append(f"{step.disconnects} streams lost")
    if step.order_errors or step.wire_errors:
        problems.append(
            f"{step.order_errors} out-of-order, {step.wire_errors} malformed"
        )
    if step.rate is not None and step.behind > max(2, 0.01 * step.sent):
        problems.append(f"publishers {step.behind} behind schedule")
    p99 = step.latency_ms(0.99)
    if p99 is None and step.rate is not None:
        problems.append("no latency samples")
    elif p99 is not None and p99 > settings.p99_limit_ms:
        problems.append(
            f"{LATENCY_PROBLEM}{p99:.1f} ms over {settings.p99_limit_ms:g} ms"
        )
    if step.loadgen_cpu > settings.saturated_above:
        problems.append(f"load generator saturated ({step.loadgen_cpu:.0%})")
    return problems


def step_summary(step: StepResult, problems: list[str]) -> dict[str, Any]:
    """The figures of a step, for the JSON output and the progress lines."""
    return {
        "rate": step.rate,
        "seconds": round(step.seconds, 2),
        "subscribers": step.subscribers,
        "samplers": step.samplers,
        "sent": step.sent,
        "acked": step.acked,
        "publishes_per_s": round(step.publishes_per_s, 1),
        "deliveries_per_s": round(step.deliveries_per_s, 1),
        "expected": step.expected,
        "delivered": step.delivered,
        "loss": step.loss,
        "latency_samples": len(step.latencies_us),
        "p50_ms": step.latency_ms(0.50),
        "p99_ms": step.latency_ms(0.99),
        "p999_ms": step.latency_ms(0.999),
        "answer_p50_ms": step.answer_ms(0.50),
        "answer_p99_ms": step.answer_ms(0.99),
        "loadgen_cpu": round(step.loadgen_cpu, 3),
        "server_cpu": round(step.server_cpu, 3),
        "core_busy": {core: round(v, 3) for core, v in step.usage.cores.items()},
        "core_stolen": {core: round(v, 3) for core, v in step.usage.stolen.items()},
        "drain_seconds": round(step.drain_seconds, 2),
        "problems": problems,
    }


def describe(label: str, summary: dict[str, Any]) -> str:
    """One progress line for a step."""
    rate = summary["rate"]
    p99 = summary["p99_ms"]
    cores = "/".join(f"{v:.0%}" for _, v in sorted(summary["core_busy"].items()))
    return (
        f"{label} rate={'max' if rate is None else f'{rate:.1f}/s'}"
        f" pub={summary['publishes_per_s']:.0f}/s"
        f" deliv={summary['deliveries_per_s']:.0f}/s loss={summary['loss']}"
        f" p99={'-' if p99 is None else f'{p99:.1f}ms'}"
        f" loadgen={summary['loadgen_cpu']:.0%} server={summary['server_cpu']:.0%}"
        f" cores={cores} -> {'; '.join(summary['problems']) or 'ok'}"
    )


def measured_step(
    lg: LoadGenerator,
    rate: float | None,
    seconds: float,
    publishers: int,
    settings: Settings,
    outcome: Outcome,
    label: str,
) -> tuple[StepResult, list[str]]:
    """Run one step; record it in ``outcome`` and print a progress line."""
    step = lg.run_step(
        rate, seconds, publishers=publishers, drain_limit=settings.drain_limit
    )
    problems = step_problems(step, settings)
    summary = step_summary(step, problems)
    outcome.steps.append(summary)
    outcome.lost += max(0, step.loss)
    say(describe(f"  {label}", summary))
    return step, problems


# S1 and S2: the highest rate held.


@dataclass
class Search:
    """The outcome of a max-rate search.

    ``held`` is the fastest step with no loss, no error and the schedule
    kept, whatever its latency; ``within`` the fastest of those whose p99
    was also under the limit (the figure the issue asks for). The search
    bisects towards the ``held`` boundary, so ``within`` is only as fine
    as the rates tried when latency fails first.
    """

    held: StepResult | None = None
    within: StepResult | None = None
    saturated: bool = False


def is_latency(problem: str) -> bool:
    return problem.startswith(LATENCY_PROBLEM)


def search_max_rate(
    try_rate: Callable[[float], tuple[StepResult, list[str]]],
    start: float,
    settings: Settings,
) -> Search:
    """Find the fastest rates held (see :class:`Search`).

    Doubles (by ``factor``) from ``start`` until a step fails, or halves
    until one holds; then bisects geometrically ``bisections`` times.
    """
    found = Search()
    bad_rate: float | None = None
    rate = start
    bisected = 0
    for _ in range(settings.max_steps):
        step, problems = try_rate(rate)
        held = not [p for p in problems if not is_latency(p)]
        if held:
            if found.held is None or rate > (found.held.rate or 0):
                found.held = step
            if not problems and (
                found.within is None or rate > (found.within.rate or 0)
            ):
                found.within = step
        else:
            bad_rate = rate if bad_rate is None else min(bad_rate, rate)
            if any("saturated" in p for p in problems):
                found.saturated = True
        good = found.held

        if bad_rate is None:
            rate *= settings.factor
        elif good is None:
            rate /= settings.factor
            if rate < start / settings.factor**4:
                break
        else:
            if bisected >= settings.bisections:
                break
            bisected += 1
            rate = math.sqrt((good.rate or 0) * bad_rate)
    return found


def broadcast_search(
    name: str,
    settings: Settings,
    *,
    scenario: str,
    channels: int,
    per_channel: int,
    publishers: int,
    start_rate: float,
    transport: str = "stream",
) -> Outcome:
    """S1 and S2: ``channels`` x ``per_channel`` streams, max rate search."""
    outcome = Outcome(scenario, name)
    names = [f"bench-{i}" for i in range(channels)]
    wanted = [per_channel] * channels
    with running(
        name, outcome, heartbeat_secs=settings.heartbeat_secs, transport=transport
    ) as server:
        lg = generator(server, names, settings)
        try:
            opened = open_streams(lg, wanted, settings, outcome)
            say(f"  opened {opened.opened} streams in {opened.seconds:.1f} s")
            warm_up(lg, channels, settings, outcome)

            def try_rate(rate: float) -> tuple[StepResult, list[str]]:
                reopen_lost(lg, wanted, settings, outcome)
                return measured_step(
                    lg,
                    rate,
                    settings.step_secs,
                    publishers,
                    settings,
                    outcome,
                    f"{scenario} {name}",
                )

            found = search_max_rate(try_rate, start_rate, settings)
        finally:
            lg.close()

    # Each publish goes to one channel, so to per_channel streams.
    for prefix, best in (("", found.within), ("held_", found.held)):
        if best is None or best.rate is None:
            outcome.figures[prefix + "deliveries_per_s"] = None
            continue
        outcome.count_cpu(best.usage, settings)
        outcome.figures.update(
            {
                prefix + "rate": best.rate,
                prefix + "deliveries_per_s": best.rate * per_channel,
                prefix + "measured_deliveries_per_s": best.deliveries_per_s,
                prefix + "p99_ms": best.latency_ms(0.99),
                prefix + "server_cpu": best.server_cpu,
                prefix + "samplers": best.samplers,
            }
        )
    if found.within is None:
        outcome.notes.append(
            f"no rate tried had p99 under {settings.p99_limit_ms:g} ms"
        )
    if found.held is None:
        outcome.notes.append("no rate held; the lowest rate tried failed")
    saturated = found.saturated
    if saturated:
        outcome.saturated = True
        outcome.notes.append(
            "the load generator saturated at a higher rate: the figure is a floor"
        )
    return outcome


def warm_up(
    lg: LoadGenerator, channels: int, settings: Settings, outcome: Outcome
) -> None:
    """One message per channel, all of them delivered, before measuring."""
    step = lg.run_step(
        float(max(channels, 5)), 1.0, publishers=1, drain_limit=settings.drain_limit
    )
    if step.loss or step.disconnects or step.publish_errors:
        outcome.notes.append(
            f"warm-up: {step.loss} deliveries lost, {step.disconnects} streams "
            f"lost, {step.publish_errors} publishes failed"
        )
    outcome.lost += max(0, step.loss)


def s1(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S1 broadcast: one channel, many subscribers."""
    outcome = broadcast_search(
        name,
        settings,
        scenario="S1",
        channels=1,
        per_channel=settings.broadcast_subscribers,
        publishers=settings.broadcast_publishers,
        start_rate=settings.broadcast_start_rate,
    )
    if name == "ours":
        rate = outcome.figures.get("rate") or outcome.figures.get("held_rate")
        if rate:
            context["s1_ours_rate"] = rate
        if rate and not outcome.figures.get("rate"):
            outcome.notes.append(
                "S6 rates are based on the highest rate held with no loss, "
                "as no rate had p99 under the limit"
            )
    return outcome


def s1_over(transport: str) -> Callable[[str, Settings, dict[str, Any]], Outcome]:
    """S1 with rpushd's subscribers on ``transport``: SSE or WebSocket.

    The same channel, subscribers, publishes and search as S1; each stream
    is a ``GET /api/events`` or ``GET /api/ws`` carrying envelopes.
    """

    def scenario(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
        if name != "ours":
            raise ValueError(f"S1 over {transport} runs against rpushd only")
        return broadcast_search(
            name,
            settings,
            scenario=f"S1-{transport}",
            channels=1,
            per_channel=settings.broadcast_subscribers,
            publishers=settings.broadcast_publishers,
            start_rate=settings.broadcast_start_rate,
            transport=transport,
        )

    scenario.__doc__ = f"S1 broadcast over rpushd's {transport} transport."
    return scenario


def s2(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S2 many channels: channels x subscribers each."""
    return broadcast_search(
        name,
        settings,
        scenario="S2",
        channels=settings.channels,
        per_channel=settings.per_channel,
        publishers=settings.channels_publishers,
        start_rate=settings.channels_start_rate,
    )


# S3 and S7: idle streams.


def s3(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S3 idle memory: RSS growth per idle stream."""
    outcome = Outcome("S3", name)
    streams = settings.idle_streams
    counts = _spread(streams, settings.idle_per_channel)
    names = [f"idle-{i}" for i in range(len(counts))]
    with running(name, outcome, heartbeat_secs=settings.heartbeat_secs) as server:
        lg = generator(server, names, settings)
        try:
            before = server.rss()
            opened = open_streams(lg, counts, settings, outcome)
            outcome.count_cpu(opened.usage, settings)
            idle = lg.idle(settings.settle_secs)
            after = server.rss()
            live = sum(lg.live_subscribers())
        finally:
            lg.close()

    growth = sum(after[pid] - before[pid] for pid in before)
    outcome.figures.update(
        streams=live,
        rss_before=sum(before.values()),
        rss_after=sum(after.values()),
        kib_per_stream=growth / 1024 / live if live else None,
    )
    if idle.disconnects:
        outcome.notes.append(f"{idle.disconnects} idle streams were closed")
    if name == "nchan":
        outcome.notes.append(
            "nchan: worker RSS growth plus master RSS growth "
            + ", ".join(f"pid {p}: {before[p]} -> {after[p]} B" for p in before)
        )
    say(
        f"  S3 {name}: {live} streams, RSS {sum(before.values()) / 2**20:.1f} -> "
        f"{sum(after.values()) / 2**20:.1f} MiB"
    )
    return outcome


def s7(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S7 idle cost: server CPU with idle streams and a 1 s heartbeat."""
    outcome = Outcome("S7", name)
    counts = _spread(settings.idle_streams, settings.idle_per_channel)
    names = [f"idle-{i}" for i in range(len(counts))]
    with running(name, outcome, heartbeat_secs=settings.idle_heartbeat_secs) as server:
        lg = generator(server, names, settings)
        try:
            open_streams(lg, counts, settings, outcome)
            lg.idle(settings.settle_secs)
            live = sum(lg.live_subscribers())
            idle = lg.idle(settings.idle_secs)
        finally:
            lg.close()

    outcome.count_cpu(idle.usage, settings)
    outcome.figures.update(
        streams=live,
        server_cpu_percent=100 * idle.usage.server,
        received_bytes_per_s=idle.received_bytes / idle.seconds,
    )
    if name == "ours":
        # A heartbeat chunk is 7 bytes: "2\r\n", two zero bytes, "\r\n".
        expected = 7 * live / settings.idle_heartbeat_secs
        outcome.figures["heartbeat_bytes_expected_per_s"] = expected
        if idle.received_bytes / idle.seconds < 0.9 * expected:
            outcome.notes.append(
                f"heartbeats short: {idle.received_bytes / idle.seconds:.0f} B/s "
                f"received, {expected:.0f} B/s expected"
            )
    else:
        outcome.notes.append("nchan sends no heartbeat frames by default")
    if idle.disconnects:
        outcome.notes.append(f"{idle.disconnects} idle streams were closed")
    say(
        f"  S7 {name}: {live} streams, server CPU {100 * idle.usage.server:.2f} %, "
        f"loadgen {idle.usage.loadgen:.0%}"
    )
    return outcome


def _spread(streams: int, per_channel: int) -> list[int]:
    """``streams`` as counts per channel, ``per_channel`` on each."""
    full, rest = divmod(streams, per_channel)
    return [per_channel] * full + ([rest] if rest else [])


# S4: reconnect storm.


def s4(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S4: every client connects at once; time until each stream is open."""
    outcome = Outcome("S4", name)
    counts = _spread(settings.storm_clients, settings.idle_per_channel)
    names = [f"storm-{i}" for i in range(len(counts))]
    with running(name, outcome, heartbeat_secs=settings.heartbeat_secs) as server:
        lg = generator(server, names, settings)
        try:
            result = open_streams(lg, counts, settings, outcome, all_at_once=True)
        finally:
            lg.close()

    outcome.count_cpu(result.usage, settings)
    ready = result.ready_seconds
    outcome.figures.update(
        clients=result.requested,
        opened=result.opened,
        failed=result.failed,
        all_ready_seconds=ready[-1] if ready and not result.failed else None,
        last_ready_seconds=ready[-1] if ready else None,
        p50_ready_seconds=ready[len(ready) // 2] if ready else None,
        p99_ready_seconds=ready[max(0, math.ceil(0.99 * len(ready)) - 1)]
        if ready
        else None,
    )
    if name == "nchan":
        outcome.notes.append(
            "nchan sends no heartbeat frame: a stream counts as open at its "
            "200 response head"
        )
    say(
        f"  S4 {name}: {result.opened}/{result.requested} open, last after "
        f"{ready[-1] if ready else float('nan'):.2f} s, {result.failed} failed, "
        f"loadgen {result.usage.loadgen:.0%}"
    )
    return outcome


# S5: publish ingest.


def s5(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S5: publishes acknowledged per second over 1 and 8 connections."""
    outcome = Outcome("S5", name)
    wanted = [settings.ingest_subscribers]
    with running(name, outcome, heartbeat_secs=settings.heartbeat_secs) as server:
        lg = generator(server, ["ingest"], settings)
        try:
            open_streams(
                lg, wanted, replace(settings, sample_every=5, min_samples=2), outcome
            )
            warm_up(lg, 1, settings, outcome)
            for connections in settings.ingest_connections:
                reopen_lost(lg, wanted, settings, outcome)
                step, problems = measured_step(
                    lg,
                    None,
                    settings.ingest_secs,
                    connections,
                    settings,
                    outcome,
                    f"S5 {name} {connections} conn",
                )
                outcome.count_cpu(step.usage, settings)
                outcome.figures[f"publishes_per_s_{connections}"] = step.publishes_per_s
                outcome.figures[f"saturated_{connections}"] = (
                    step.loadgen_cpu > settings.saturated_above
                )
                outcome.figures[f"server_cpu_{connections}"] = step.server_cpu
                outcome.figures[f"answer_p50_ms_{connections}"] = step.answer_ms(0.5)
                outcome.figures[f"answer_p99_ms_{connections}"] = step.answer_ms(0.99)
                if problems:
                    outcome.notes.append(
                        f"{connections} connection(s): " + "; ".join(problems)
                    )
        finally:
            lg.close()
    return outcome


# S6: latency at fixed rates.


def s6(name: str, settings: Settings, context: dict[str, Any]) -> Outcome:
    """S6: S1 at 25 % and 75 % of our S1 maximum; latency percentiles."""
    outcome = Outcome("S6", name)
    top = context.get("s1_ours_rate")
    if not top:
        say("  S6 needs our S1 maximum: measuring it first")
        first = s1("ours", settings, context)
        context.setdefault("extra", []).append(first)
        top = context.get("s1_ours_rate")
    if not top:
        outcome.notes.append("our S1 maximum is unknown: S6 not run")
        return outcome

    subscribers = settings.broadcast_subscribers
    with running(name, outcome, heartbeat_secs=settings.heartbeat_secs) as server:
        lg = generator(server, ["latency"], settings)
        try:
            open_streams(lg, [subscribers], settings, outcome)
            warm_up(lg, 1, settings, outcome)
            for share in (25, 75):
                reopen_lost(lg, [subscribers], settings, outcome)
                rate = top * share / 100
                step, problems = measured_step(
                    lg,
                    rate,
                    settings.step_secs,
                    settings.broadcast_publishers,
                    settings,
                    outcome,
                    f"S6 {name} {share}%",
                )
                outcome.count_cpu(step.usage, settings)
                outcome.figures[f"rate_{share}"] = rate
                for label, fraction in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                    outcome.figures[f"{label}_{share}"] = step.latency_ms(fraction)
                outcome.figures[f"samples_{share}"] = len(step.latencies_us)
                outcome.figures[f"held_{share}"] = not [
                    p for p in problems if not is_latency(p)
                ]
                if problems:
                    outcome.notes.append(f"{share} %: " + "; ".join(problems))
        finally:
            lg.close()
    return outcome


SCENARIOS: dict[str, Callable[[str, Settings, dict[str, Any]], Outcome]] = {
    "S1": s1,
    **{name: s1_over(transport) for name, transport in TRANSPORTS.items()},
    "S2": s2,
    "S3": s3,
    "S4": s4,
    "S5": s5,
    "S6": s6,
    "S7": s7,
}
