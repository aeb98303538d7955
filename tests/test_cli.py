"""The command line, run as ``python -m rpushd`` in a subprocess.

Every failure must be one line on stderr and a non-zero exit status, never a
traceback. Commands that talk to a daemon are run against a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from helpers import PUBLISH_SECRET, SECRET, UNIT, Daemon
from rpushd import __version__, cli, tokens
from rpushd.errors import InvalidToken
from rpushd.frames import FrameDecoder


def cli_env(**values: str) -> dict[str, str]:
    """This process's environment without any RPUSHD_ setting, plus ``values``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RPUSHD_")}
    return {**clean, **values}


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpushd", *args],
        env=env if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10 * UNIT,
    )


def assert_one_line_failure(
    result: subprocess.CompletedProcess[str], *needles: str
) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def daemon_env(daemon: Daemon, secret: str = PUBLISH_SECRET) -> dict[str, str]:
    return cli_env(
        RPUSHD_LISTEN=f"127.0.0.1:{daemon.port}", RPUSHD_PUBLISH_SECRET=secret
    )


class Output:
    """Collects what a child process writes to a pipe, in a thread.

    The thread owns the pipe and closes it at end of file.
    """

    def __init__(self, pipe: IO[bytes] | None) -> None:
        assert pipe is not None
        self.data = bytearray()
        self.closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[bytes]) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            with self._changed:
                self.data += chunk
                self._changed.notify_all()
        pipe.close()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(
        self, ready: Callable[[bytes], bool], timeout: float = 10 * UNIT
    ) -> bytes:
        """Wait until ``ready`` holds for everything received so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready(bytes(self.data)):
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    raise AssertionError(f"not ready; received {bytes(self.data)!r}")
                self._changed.wait(remaining)
            return bytes(self.data)


@dataclass
class Child:
    """A running child process and what it has written so far."""

    process: subprocess.Popen[bytes]
    out: Output
    err: Output


Spawn = Callable[[list[str]], Child]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start child processes; any still running at teardown are killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str]) -> Child:
        process = subprocess.Popen(
            args,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return Child(process, Output(process.stdout), Output(process.stderr))

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


# secret and --version.


def test_secret_prints_a_long_url_safe_string() -> None:
    result = run_cli("secret")
    assert result.returncode == 0
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}\n", result.stdout), result.stdout


def test_output_to_a_closed_pipe_ends_without_a_traceback() -> None:
    # As for ``rpushd stats | head -1``, but certain: closed before writing.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rpushd", "secret"],
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=10 * UNIT,
        )
    finally:
        os.close(writer)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert result.returncode != 0


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, __version__)


# token.


def test_token_prints_a_token_accepted_for_its_channel_and_ttl() -> None:
    before = int(time.time())
    result = run_cli(
        "token", "room:1", "--ttl", "60", env=cli_env(RPUSHD_SECRET=SECRET)
    )
    after = int(time.time())
    assert result.returncode == 0, result.stderr

    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    tokens.verify(token, "room:1", [SECRET.encode()], before + 60)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token, "room:1", [SECRET.encode()], after + 61)
    with pytest.raises(InvalidToken):
        tokens.verify(token, "room:2", [SECRET.encode()], before)


def test_token_is_signed_with_the_trimmed_secret() -> None:
    env = cli_env(RPUSHD_SECRET=f"  {SECRET}\n")
    result = run_cli("token", "room", env=env)
    assert result.returncode == 0, result.stderr
    tokens.verify(result.stdout.strip(), "room", [SECRET.encode()], int(time.time()))


@pytest.mark.parametrize("value", [None, "   "])
def test_token_without_a_secret_fails_with_one_line_naming_rpushd_secret(
    value: str | None,
) -> None:
    env = cli_env() if value is None else cli_env(RPUSHD_SECRET=value)
    assert_one_line_failure(run_cli("token", "room", env=env), "RPUSHD_SECRET")


@pytest.mark.parametrize("channel", ["room/1", "r\u043eom"])
def test_token_for_an_invalid_channel_fails_with_one_clear_line(channel: str) -> None:
    result = run_cli("token", channel, env=cli_env(RPUSHD_SECRET=SECRET))
    assert_one_line_failure(result, "invalid channel name")


def test_token_with_a_ttl_below_one_second_fails_with_one_line() -> None:
    result = run_cli("token", "room", "--ttl=0", env=cli_env(RPUSHD_SECRET=SECRET))
    assert_one_line_failure(result, "--ttl")


# Argument errors.


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["token"],
        ["token", "room", "--ttl", "soon"],
        ["stats", "--json", "--xml"],
        ["secret", "extra"],
    ],
    ids=lambda args: " ".join(args),
)
def test_bad_arguments_fail_with_one_line_and_no_traceback(args: list[str]) -> None:
    assert_one_line_failure(run_cli(*args), "rpushd")


# Help.


def test_every_option_and_argument_of_every_command_has_help() -> None:
    parser = cli._parser()
    commands = next(
        action
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for name, command in [("rpushd", parser), *commands.choices.items()]:
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name}: {action.option_strings or action.dest}"


def test_stats_and_dev_help_describe_their_options() -> None:
    stats = run_cli("stats", "--help")
    assert stats.returncode == 0, stats.stderr
    assert re.search(r"--json\s+print JSON", stats.stdout), stats.stdout
    assert re.search(r"--xml\s+print XML", stats.stdout), stats.stdout
    dev = run_cli("dev", "--help")
    assert re.search(r"--listen IP:PORT\s+address to listen on", dev.stdout)


# publish and stats.


def test_publish_reaches_a_subscriber_of_a_running_daemon(daemon: Daemon) -> None:
    stream = daemon.subscribe("room")
    message = '{"text": "caf\u00e9", "n": [1, 2]}'
    result = run_cli("publish", "room", message, env=daemon_env(daemon))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert stream.next_message() == {"text": "caf\u00e9", "n": [1, 2]}
    stream.close()


@pytest.mark.parametrize("message", ["{", "hello"])
def test_publish_of_invalid_json_fails_with_one_clear_line(message: str) -> None:
    env = cli_env(RPUSHD_PUBLISH_SECRET=PUBLISH_SECRET)
    result = run_cli("publish", "room", message, env=env)
    assert_one_line_failure(result, "not valid JSON")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_publish_of_a_message_as_deep_as_the_daemon_takes_reaches_it(
    daemon: Daemon,
) -> None:
    # The daemon accepts this over HTTP; the command line must send it too.
    depth = 254
    assert daemon.publish("deep", json.loads(nested(depth))).status == 204
    stream = daemon.subscribe("deep")
    result = run_cli("publish", "deep", nested(depth), env=daemon_env(daemon))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert stream.next_message() == json.loads(nested(depth))
    stream.close()


def test_publish_of_a_message_too_deep_to_encode_fails_with_one_line() -> None:
    env = cli_env(
        RPUSHD_LISTEN=f"127.0.0.1:{free_port()}",
        RPUSHD_PUBLISH_SECRET=PUBLISH_SECRET,
    )
    result = run_cli("publish", "room", nested(255), env=env)
    assert_one_line_failure(result, "nested too deeply")


@pytest.mark.parametrize("args", [["publish", "room", "1"], ["stats"]])
def test_publish_secret_with_a_line_break_fails_with_one_line_naming_it(
    args: list[str],
) -> None:
    env = cli_env(
        RPUSHD_LISTEN=f"127.0.0.1:{free_port()}",
        RPUSHD_PUBLISH_SECRET="first\nsecond",
    )
    result = run_cli(*args, env=env)
    assert_one_line_failure(result, "RPUSHD_PUBLISH_SECRET", "line break")


def test_publish_with_a_wrong_secret_reports_the_refusal(daemon: Daemon) -> None:
    env = daemon_env(daemon, secret="not-the-secret")
    result = run_cli("publish", "room", "1", env=env)
    assert_one_line_failure(result, "401")


def test_publish_without_the_publish_secret_fails_naming_it() -> None:
    result = run_cli("publish", "room", "1")
    assert_one_line_failure(result, "RPUSHD_PUBLISH_SECRET")
    # A new secret would not be the daemon's: point at the daemon's own.
    assert "the daemon's value" in result.stderr
    assert "rpushd secret" not in result.stderr


@pytest.mark.parametrize("args", [["publish", "room", "1"], ["stats"]])
def test_unreachable_daemon_fails_with_one_line_cannot_reach(args: list[str]) -> None:
    env = cli_env(
        RPUSHD_LISTEN=f"127.0.0.1:{free_port()}", RPUSHD_PUBLISH_SECRET="anything"
    )
    assert_one_line_failure(run_cli(*args, env=env), "cannot reach")


def test_stats_json_verbose_prints_json_listing_the_channels(daemon: Daemon) -> None:
    stream = daemon.subscribe("room")
    result = run_cli("stats", "--json", "--verbose", env=daemon_env(daemon))
    assert result.returncode == 0, result.stderr

    document = json.loads(result.stdout)
    assert document["active_subscribers"] == 1
    assert {"name": "room", "subscribers": 1}.items() <= document["channels"][0].items()
    stream.close()


@pytest.mark.parametrize(
    ("args", "start"),
    [
        ([], "rpushd stats\n"),
        (["--xml"], '<?xml version="1.0" encoding="UTF-8"?>'),
    ],
    ids=["text", "xml"],
)
def test_stats_prints_the_chosen_rendering(
    daemon: Daemon, args: list[str], start: str
) -> None:
    result = run_cli("stats", *args, env=daemon_env(daemon))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(start)


def test_stats_authenticates_with_a_non_ascii_publish_secret() -> None:
    # The daemon compares the header's bytes with the secret's UTF-8 bytes,
    # which is what curl sends; the command line must send the same.
    secret = "s\u00e9cret-\u20ac"
    with Daemon(publish_secret=secret) as daemon:
        result = run_cli("stats", env=daemon_env(daemon, secret=secret))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


def test_stats_with_a_wrong_secret_reports_the_refusal(daemon: Daemon) -> None:
    result = run_cli("stats", env=daemon_env(daemon, secret="not-the-secret"))
    assert_one_line_failure(result, "401")


# serve.


def test_serve_reads_its_settings_from_an_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "rpushd.env"
    env_file.write_text(
        "# settings for the test\n"
        "export RPUSHD_LISTEN=127.0.0.1:0\n"
        "\n"
        'RPUSHD_PUBLISH_SECRET="from-the-file"\n'
    )
    daemon = Daemon()
    del daemon.env["RPUSHD_LISTEN"], daemon.env["RPUSHD_PUBLISH_SECRET"]
    try:
        daemon.start("--env-file", str(env_file))
        with_file_secret = {"Authorization": "Bearer from-the-file"}
        assert (
            daemon.request("GET", "/api/stats", headers=with_file_secret).status == 200
        )
        assert daemon.request("GET", "/api/stats", auth=True).status == 401
    finally:
        daemon.kill()


def test_serve_with_a_missing_env_file_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "absent.env"
    env = cli_env(RPUSHD_SECRET=SECRET, RPUSHD_PUBLISH_SECRET=PUBLISH_SECRET)
    assert_one_line_failure(
        run_cli("serve", "--env-file", str(path), env=env), path.name
    )


def serve_env(**change: str | None) -> dict[str, str]:
    """Settings for serve on a free port, with ``change`` (None unsets)."""
    values = {
        "RPUSHD_LISTEN": f"127.0.0.1:{free_port()}",
        "RPUSHD_SECRET": SECRET,
        "RPUSHD_PUBLISH_SECRET": PUBLISH_SECRET,
        **change,
    }
    return cli_env(**{k: v for k, v in values.items() if v is not None})


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"RPUSHD_PUBLISH_SECRET": None}, "RPUSHD_PUBLISH_SECRET"),
        ({"RPUSHD_SECRET": "  "}, "RPUSHD_SECRET"),
        ({"RPUSHD_SECRET": "s\udcff"}, "RPUSHD_SECRET"),
        ({"RPUSHD_HEARTBEAT_SECS": "0"}, "RPUSHD_HEARTBEAT_SECS"),
        ({"RPUSHD_LISTEN": "localhost:45831"}, "RPUSHD_LISTEN"),
    ],
    ids=[
        "no publish secret",
        "blank secret",
        "secret not utf-8",
        "heartbeat 0",
        "hostname",
    ],
)
def test_serve_with_a_bad_setting_stops_before_binding_with_one_line_naming_it(
    change: dict[str, str | None], name: str
) -> None:
    result = run_cli("serve", env=serve_env(**change))
    assert_one_line_failure(result, name)
    assert "listening" not in result.stderr


@pytest.mark.parametrize("command", [["serve"], []], ids=["serve", "no command"])
def test_serve_without_a_secret_says_how_to_make_one_or_try_dev(
    command: list[str],
) -> None:
    result = run_cli(*command, env=serve_env(RPUSHD_SECRET=None))
    assert_one_line_failure(
        result, "RPUSHD_SECRET is required", "rpushd secret", "rpushd dev"
    )


def test_serve_with_an_env_file_not_in_utf8_fails_naming_file_and_line(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "rpushd.env"
    env_file.write_bytes(b"RPUSHD_LOG_LEVEL=info\nRPUSHD_SECRET=caf\xe9\n")
    result = run_cli("serve", "--env-file", str(env_file), env=serve_env())
    assert_one_line_failure(result, f"{env_file}:2: not valid UTF-8")
    assert "codec" not in result.stderr


def test_no_command_means_serve() -> None:
    result = run_cli(env=serve_env(RPUSHD_SECRET=None))
    assert_one_line_failure(result, "RPUSHD_SECRET")
    assert "listening" not in result.stderr


# dev.


def shell_commands(text: str) -> list[str]:
    """The ``curl`` commands in ``text``, backslash continuations included."""
    commands: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is not None:
            current.append(stripped)
        elif stripped.startswith("curl "):
            current = [stripped]
        else:
            continue
        if not stripped.endswith("\\"):
            commands.append("\n".join(current))
            current = None
    return commands


def the_command(commands: list[str], path: str) -> str:
    matching = [command for command in commands if path in command]
    assert len(matching) == 1, commands
    return matching[0]


def test_dev_prints_curl_commands_that_work_as_printed(spawn: Spawn) -> None:
    port = free_port()
    dev = spawn(
        [sys.executable, "-m", "rpushd", "dev", "--listen", f"127.0.0.1:{port}"]
    )
    guide = dev.out.wait_for(
        lambda data: re.search(rb"\nRPUSHD_PUBLISH_SECRET=\S+\n", data) is not None
    ).decode()
    commands = shell_commands(guide)
    assert f"127.0.0.1:{port}" in guide

    # Subscribe exactly as printed, and wait for the opening heartbeat.
    subscriber = spawn(["sh", "-c", "exec " + the_command(commands, "/api/stream/")])
    subscriber.out.wait_for(lambda data: data.startswith(b"\x00\x00"))

    publish = subprocess.run(
        ["sh", "-c", the_command(commands, "/api/publish")],
        capture_output=True,
        timeout=10 * UNIT,
    )
    assert publish.returncode == 0, publish.stderr
    body = subscriber.out.wait_for(lambda data: b'{"hello":"world"}' in data)
    assert b'{"hello":"world"}' in FrameDecoder().feed(body)

    stats = subprocess.run(
        ["sh", "-c", the_command(commands, "/api/stats")],
        capture_output=True,
        timeout=10 * UNIT,
    )
    assert b"rpushd stats\n" in stats.stdout
    assert b"- demo | subscribers=1 |" in stats.stdout

    # The printed demo page, and the client module it imports, are served.
    page_url = re.search(r"http://\S+/demo/\?channel=demo&token=\S+", guide)
    assert page_url is not None, guide
    with urllib.request.urlopen(page_url.group(0), timeout=5 * UNIT) as page:
        assert b'from "./rpushd.js"' in page.read()
    module_url = f"http://127.0.0.1:{port}/demo/rpushd.js"
    with urllib.request.urlopen(module_url, timeout=5 * UNIT) as module:
        assert module.headers["Content-Type"].startswith("text/javascript")
    # Typed without its slash, the address leads to the page all the same.
    folder = f"http://127.0.0.1:{port}/demo"
    with urllib.request.urlopen(folder, timeout=5 * UNIT) as page:
        assert page.url == folder + "/"

    # SIGTERM ends dev cleanly, and ends the open stream properly too.
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(10 * UNIT) == 0, bytes(dev.err.data)
    assert subscriber.process.wait(10 * UNIT) == 0, bytes(subscriber.err.data)
