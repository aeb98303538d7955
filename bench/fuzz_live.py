"""Fuzz a live daemon with raw bytes for as long as you like.

    python bench/fuzz_live.py --minutes 10
    python bench/fuzz_live.py --minutes 60 --seed 42 --failures /tmp/fuzz
    python bench/fuzz_live.py --replay /tmp/fuzz

The long version of ``tests/test_fuzz_http.py``, with the same request
grammar and the same checks (both live in ``tests/fuzzing.py``). It starts
``python -m rpushd serve`` on a loopback port and sends requests from
``--workers`` connections at once until the time is up. Every connection
must get well-formed answers, no 5xx, a JSON error on every 4xx, and must
end within a bound. After every batch the daemon must be alive, have
logged no traceback and no ERROR, and still deliver a message published
to a watched stream; at every checkpoint (and at the end) its file
descriptors must come back to their count before the run.

Each case is generated from its own seed, itself drawn from the run's
seed (printed at the start), so the same ``--seed`` sends the same cases
in the same order. A failing case is saved to ``--failures`` as
``<case seed>.bin`` (the bytes sent) and ``<case seed>.json`` (how it was
sent and what went wrong); ``--replay`` sends saved cases again, one at a
time, to a fresh daemon. A problem seen in the log or a crash is pinned
on a case by replaying the batch it happened in, one case at a time; if
no single case brings it back, the whole batch is saved in
``batch-<seed>/``.

Progress goes to stderr, the summary to stdout; the exit status is 1 if
anything failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import (  # noqa: E402
    FUZZ_ENV,
    Outcome,
    RandomChooser,
    Sending,
    bad_log_lines,
    exchange,
    open_fds,
    problems,
    raw_exchange,
    wait_for_fds,
)
from helpers import Daemon, Stream  # noqa: E402

WATCHED = "watched-by-the-fuzzer"
BATCH = 200


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Case:
    seed: int
    sending: Sending

    @classmethod
    def generate(cls, seed: int) -> Case:
        return cls(seed, raw_exchange(RandomChooser(seed)))

    def save(self, directory: Path, report: dict[str, object]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{self.seed}.bin").write_bytes(self.sending.data)
        report = {
            "seed": self.seed,
            "half_close": self.sending.half_close,
            "after_upgrade": self.sending.after_upgrade.hex(),
            **report,
        }
        text = json.dumps(report, indent=2) + "\n"
        (directory / f"{self.seed}.json").write_text(text)

    @classmethod
    def load(cls, path: Path) -> Case:
        """A case saved by :meth:`save` (its ``.bin`` or ``.json`` file)."""
        meta = path.with_suffix(".json")
        saved = json.loads(meta.read_text()) if meta.exists() else {}
        sending = Sending(
            path.with_suffix(".bin").read_bytes(),
            saved.get("half_close", True),
            bytes.fromhex(saved.get("after_upgrade", "")),
        )
        return cls(int(path.stem), sending)


@dataclass
class Target:
    """The daemon under fuzz, with a watched stream and its starting fds."""

    daemon: Daemon
    watcher: Stream
    baseline_fds: int
    published: int = 0

    @classmethod
    def start(cls) -> Target:
        daemon = Daemon(FUZZ_ENV).start()
        watcher = daemon.subscribe(WATCHED)
        return cls(daemon, watcher, open_fds(daemon_pid(daemon)))

    @property
    def alive(self) -> bool:
        return self.daemon.process is not None and self.daemon.process.poll() is None

    def health_problems(self) -> list[str]:
        """What is wrong with the daemon right now, if anything."""
        if not self.alive:
            return ["the daemon died"]
        found = []
        try:
            if self.daemon.request("GET", "/healthz").status != 200:
                found.append("/healthz is not 200")
            self.published += 1
            reply = self.daemon.publish(WATCHED, {"n": self.published})
            if reply.status != 204:
                found.append(f"publish answered {reply.status}")
            elif self.watcher.next_message() != {"n": self.published}:
                found.append("the watched stream got the wrong message")
        except (OSError, TimeoutError, ValueError) as exc:
            found.append(f"the daemon stopped serving: {exc!r}")
        return found

    def fd_problems(self) -> list[str]:
        count = wait_for_fds(daemon_pid(self.daemon), self.baseline_fds)
        if count > self.baseline_fds:
            return [f"{count} file descriptors open, {self.baseline_fds} at start"]
        return []

    def stop(self) -> None:
        self.watcher.close()
        self.daemon.kill()


def daemon_pid(daemon: Daemon) -> int:
    assert daemon.process is not None
    return daemon.process.pid


@dataclass
class Run:
    """Counts and failures of one run."""

    failures_dir: Path
    cases: int = 0
    failures: list[dict[str, object]] = field(default_factory=list)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, case: Case, found: list[str], received: bytes = b"") -> None:
        report: dict[str, object] = {
            "problems": found,
            "received": received[:2000].decode("latin-1"),
        }
        case.save(self.failures_dir, report)
        self.failures.append({"seed": case.seed, **report})
        say(f"FAILURE case {case.seed}: {'; '.join(found)}")


def send(target: Target, case: Case) -> tuple[Outcome, list[str]]:
    try:
        outcome = exchange(target.daemon.port, case.sending)
    except OSError as exc:  # the daemon is gone: the health check says so
        return Outcome(b"", "refused", 0.0), [f"cannot connect: {exc}"]
    return outcome, problems(outcome)


def pin_down(target: Target, batch: list[Case], run: Run, what: str) -> Target:
    """Replay ``batch`` one case at a time to find the one behind ``what``."""
    say(f"{what}: replaying the batch case by case to find the cause")
    for case in batch:
        if not target.alive:
            target.stop()
            target = Target.start()
        seen = len(target.daemon.lines)
        outcome, found = send(target, case)
        found += [
            f"logged: {line.strip()}"
            for line in bad_log_lines(target.daemon.lines[seen:])
        ]
        if not target.alive:
            found.append("the daemon died")
        if found:
            run.record(case, found, outcome.received)
            return target
    # Perhaps it takes cases at the same time: keep the whole batch.
    directory = run.failures_dir / f"batch-{batch[0].seed}"
    for case in batch:
        case.save(directory, {"problems": [what, "not reproduced alone"]})
    run.failures.append({"seed": None, "problems": [what, f"batch in {directory}"]})
    say(f"FAILURE {what}: not reproduced by any single case of the batch")
    return target


def fuzz(args: argparse.Namespace) -> Run:
    run = Run(args.failures)
    seeds = random.Random(args.seed)
    target = Target.start()
    say(f"fuzzing {target.daemon.host}:{target.daemon.port} for {args.minutes} min")
    end = time.monotonic() + args.minutes * 60
    checkpoint = time.monotonic() + args.check_every

    with ThreadPoolExecutor(args.workers) as pool:
        while time.monotonic() < end:
            batch = [Case.generate(seeds.getrandbits(63)) for _ in range(BATCH)]
            seen = len(target.daemon.lines)
            results = list(pool.map(send, [target] * len(batch), batch))
            run.cases += len(batch)

            for case, (outcome, found) in zip(batch, results, strict=True):
                run.answers[outcome.received[9:12].decode("latin-1") or "none"] += 1
                # After a crash, pin_down below finds the case behind it.
                if found and target.alive:
                    run.record(case, found, outcome.received)

            logged = bad_log_lines(target.daemon.lines[seen:])
            unhealthy = target.health_problems()
            if logged or unhealthy:
                target = pin_down(target, batch, run, "; ".join(logged + unhealthy))

            if time.monotonic() >= checkpoint or time.monotonic() >= end:
                for problem in target.fd_problems():
                    run.failures.append({"seed": None, "problems": [problem]})
                    say(f"FAILURE {problem}")
                checkpoint = time.monotonic() + args.check_every
                say(f"{run.cases} cases, {len(run.failures)} failures")

    target.stop()
    return run


def replay(args: argparse.Namespace) -> Run:
    paths = sorted(
        path
        for given in args.replay
        for path in (given.glob("*.bin") if given.is_dir() else [given])
    )
    run = Run(args.failures)
    target = Target.start()
    for path in paths:
        case = Case.load(path)
        seen = len(target.daemon.lines)
        _, found = send(target, case)
        found += bad_log_lines(target.daemon.lines[seen:])
        found += target.health_problems()
        run.cases += 1
        say(f"{path.name}: {'; '.join(found) or 'ok'}")
        if found:
            run.failures.append({"seed": case.seed, "problems": found})
        if not target.alive:
            target.stop()
            target = Target.start()
    target.stop()
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="how long to run (default: 10)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the run's seed (default: random)"
    )
    parser.add_argument(
        "--workers", type=int, default=16, help="connections at once (default: 16)"
    )
    parser.add_argument(
        "--check-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often to check file descriptors (default: 60)",
    )
    parser.add_argument(
        "--failures",
        type=Path,
        default=Path("fuzz-failures"),
        metavar="DIR",
        help="where failing cases are saved (default: ./fuzz-failures)",
    )
    parser.add_argument(
        "--replay", type=Path, nargs="+", metavar="PATH", help="saved cases to resend"
    )
    args = parser.parse_args()

    started = time.monotonic()
    if args.replay:
        run = replay(args)
    else:
        if args.seed is None:
            args.seed = random.SystemRandom().getrandbits(32)
        say(f"seed: {args.seed}")
        run = fuzz(args)
    elapsed = time.monotonic() - started

    print(f"seed: {args.seed}")
    print(f"cases: {run.cases} in {elapsed:.0f} s ({run.cases / elapsed:.0f}/s)")
    print(f"failures: {len(run.failures)}")
    if run.answers:
        common = ", ".join(f"{k} {v}" for k, v in run.answers.most_common())
        print(f"first answers: {common}")
    for failure in run.failures[:20]:
        print(f"- case {failure['seed']}: {failure['problems']}")
    if run.failures:
        print(f"saved in {args.failures}")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
