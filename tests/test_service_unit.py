"""The shipped systemd unit, deploy/rpushd.service.

Its structure is checked everywhere. Where ``systemd-analyze`` works (it
needs no running systemd, but not every container has it), the unit must
also pass ``verify`` without a warning and keep a low exposure score.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers import UNIT
from rpushd import config, server

UNIT_FILE = Path(__file__).resolve().parent.parent / "deploy" / "rpushd.service"
Service = dict[str, list[str]]
Sections = dict[str, Service]

# systemd-analyze security scores exposure from 0 to 100 and prints it
# divided by ten. The shipped unit scores 11 ("1.1 OK") with systemd 252;
# the margin absorbs the checks that later versions add.
MAX_EXPOSURE = 20


def parse_unit(text: str) -> Sections:
    """Sections of a unit file, each key with every value it was given."""
    sections: Sections = {}
    current: Service | None = None
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: keep settings on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"line {number}: {raw_line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> Service:
    return parse_unit(UNIT_FILE.read_text())["Service"]


def only(service: Service, key: str) -> str:
    values = service.get(key)
    assert values is not None and len(values) == 1, f"{key}= once: {values}"
    return values[0]


# Structure.


def test_unit_runs_the_virtualenv_daemon_from_the_env_file(
    service: Service,
) -> None:
    assert only(service, "Type") == "notify"
    assert only(service, "NotifyAccess") == "main"
    assert int(only(service, "WatchdogSec")) > 0
    assert only(service, "ExecStart") == (
        "/opt/rpushd/venv/bin/rpushd serve --env-file /etc/rpushd.env"
    )
    assert only(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # Only the daemon reads the file: a setting systemd also put in the
    # environment would survive its deletion from the file and a reload.
    assert "EnvironmentFile" not in service


def test_unit_restarts_on_failure_and_can_be_enabled() -> None:
    sections = parse_unit(UNIT_FILE.read_text())
    assert only(sections["Service"], "Restart") == "on-failure"
    assert only(sections["Install"], "WantedBy") == "multi-user.target"


def test_unit_leaves_time_for_the_daemon_to_finish_streams(
    service: Service,
) -> None:
    defaults = config.load({"RPUSHD_SECRET": "s", "RPUSHD_PUBLISH_SECRET": "p"})
    shutdown_secs = (
        defaults.shutdown_grace_secs + defaults.drain_secs + server.CLOSE_WAIT_SECS
    )

    assert only(service, "KillSignal") == "SIGTERM"
    timeout = only(service, "TimeoutStopSec")
    assert timeout.isdigit(), "TimeoutStopSec in plain seconds"
    assert int(timeout) > shutdown_secs


def test_unit_allows_many_open_streams(service: Service) -> None:
    assert int(only(service, "LimitNOFILE")) >= 65536


def test_unit_runs_unprivileged_and_sandboxed(service: Service) -> None:
    assert only(service, "User") == "rpushd"
    assert only(service, "Group") == "rpushd"
    assert "DynamicUser" not in service
    assert only(service, "CapabilityBoundingSet") == ""
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ]:
        assert only(service, key) == value, key

    families = only(service, "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert service["SystemCallFilter"][0] == "@system-service"


# systemd's own checks.


def test_unit_passes_systemd_analyze_where_it_runs(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None or not analyze_works(analyze, tmp_path):
        warnings.warn(
            "systemd-analyze cannot run here: only the structural checks ran",
            stacklevel=1,
        )
        return

    # verify insists that ExecStart= names an existing executable, and
    # nothing is installed under /opt/rpushd here.
    unit = tmp_path / "rpushd.service"
    unit.write_text(
        UNIT_FILE.read_text().replace(
            "ExecStart=/opt/rpushd/venv/bin/rpushd serve",
            f"ExecStart={sys.executable} -m rpushd serve",
        )
    )

    result = run(analyze, "verify", str(unit))
    assert result.returncode == 0, result.stderr
    # Unknown settings are only warnings, with the exit status still 0.
    lines = result.stderr.splitlines()
    complaints = [line for line in lines if unit.name in line]
    assert complaints == []

    threshold = f"--threshold={MAX_EXPOSURE}"
    result = run(analyze, "security", "--offline=yes", threshold, str(unit))
    assert result.returncode == 0, result.stdout + result.stderr


def analyze_works(analyze: str, directory: Path) -> bool:
    """Whether verify and security accept a trivial unit here."""
    probe = directory / "probe.service"
    probe.write_text(f"[Service]\nExecStart={sys.executable} -c pass\n")
    verify = run(analyze, "verify", str(probe))
    security = run(analyze, "security", "--offline=yes", str(probe))
    return verify.returncode == 0 and security.returncode == 0


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30 * UNIT)
