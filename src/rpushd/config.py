"""Configuration read from the environment (PROTOCOL.md, "Configuration").

Values come from ``os.environ`` and, for ``--env-file``, from a file in the
``KEY=VALUE`` format that systemd's ``EnvironmentFile=`` reads. A missing or
invalid value raises :class:`ConfigError` naming the variable, before anything
binds.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rpushd.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:45831"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TRUTHY = ("1", "true", "yes", "on")
FALSY = ("0", "false", "no", "off", "")
# Secrets shorter than this are easy to guess offline from one token.
MIN_SECRET_BYTES = 32

# Every variable load() reads; any other RPUSHD_* variable is reported at
# start as unknown, since it is most likely a misspelt setting. The command
# line's own commands read only RPUSHD_LISTEN, RPUSHD_SECRET and
# RPUSHD_PUBLISH_SECRET, which are settings too.
SETTINGS = (
    "RPUSHD_LISTEN",
    "RPUSHD_SECRET",
    "RPUSHD_PUBLISH_SECRET",
    "RPUSHD_HEARTBEAT_SECS",
    "RPUSHD_CHANNEL_IDLE_TTL_SECS",
    "RPUSHD_MAX_PENDING_BYTES",
    "RPUSHD_REQUEST_TIMEOUT_SECS",
    "RPUSHD_KEEPALIVE_TIMEOUT_SECS",
    "RPUSHD_SHUTDOWN_GRACE_SECS",
    "RPUSHD_LOG_LEVEL",
    "RPUSHD_HISTORY_SIZE",
    "RPUSHD_HISTORY_TTL_SECS",
    "RPUSHD_HISTORY_MAX_BYTES",
    "RPUSHD_MAX_CHANNELS_PER_STREAM",
    "RPUSHD_SECRET_PREVIOUS",
    "RPUSHD_PUBLISH_SECRET_PREVIOUS",
    "RPUSHD_DRAIN_SECS",
    "RPUSHD_MAX_CONNECTIONS",
    "RPUSHD_ENFORCE_TOKEN_EXPIRY",
    "RPUSHD_LOG_FORMAT",
)
# The test suite and the fuzzers read RPUSHD_TEST_STRICT,
# RPUSHD_TEST_TIMEOUT_UNIT and RPUSHD_FUZZ_PROFILE. They are set in CI and
# in developers' shells, and every daemon the tests start inherits them, so
# these prefixes are the project's own and never reported as unknown.
TOOLING_PREFIXES = ("RPUSHD_TEST_", "RPUSHD_FUZZ_")

# How to fix a missing or empty secret that a daemon about to start needs.
# Commands that talk to a running daemon need its secret instead, and say so.
MAKE_A_SECRET = (
    "generate one with: rpushd secret (or run rpushd dev for a quickstart "
    "that needs no configuration)"
)


@dataclass(frozen=True)
class Config:
    """Every setting of a running daemon, validated."""

    host: str
    port: int
    secret: bytes
    publish_secret: bytes
    heartbeat_secs: int = 15
    channel_idle_ttl_secs: int = 3600
    max_pending_bytes: int = 1024 * 1024
    request_timeout_secs: float = 10.0
    keepalive_timeout_secs: float = 75.0
    shutdown_grace_secs: float = 5.0
    log_level: str = "info"
    history_size: int = 100
    history_ttl_secs: int = 300
    history_max_bytes: int = 64 * 1024 * 1024
    max_channels_per_stream: int = 32
    secret_previous: bytes | None = None
    publish_secret_previous: bytes | None = None
    drain_secs: int = 3
    max_connections: int = 0
    enforce_token_expiry: bool = False
    log_format: str = "text"
    # RPUSHD_* variables of the environment that name no setting, for
    # warnings() to report.
    unknown_variables: tuple[str, ...] = ()

    @property
    def subscribe_secrets(self) -> tuple[bytes, ...]:
        """Keys that may have signed a subscribe token, current one first."""
        return _with_previous(self.secret, self.secret_previous)

    @property
    def publish_secrets(self) -> tuple[bytes, ...]:
        """Bearer secrets accepted on privileged endpoints."""
        return _with_previous(self.publish_secret, self.publish_secret_previous)

    @property
    def listen(self) -> str:
        """The listen address in the ``IP:PORT`` form it was given in."""
        return format_address(self.host, self.port)


def load(environ: Mapping[str, str]) -> Config:
    """Build a :class:`Config` from environment variables."""
    host, port = parse_listen(environ.get("RPUSHD_LISTEN", DEFAULT_LISTEN))

    return Config(
        host=host,
        port=port,
        secret=secret_from(environ, "RPUSHD_SECRET"),
        publish_secret=secret_from(environ, "RPUSHD_PUBLISH_SECRET"),
        heartbeat_secs=_whole(environ, "RPUSHD_HEARTBEAT_SECS", 15, 1, 86400),
        channel_idle_ttl_secs=_whole(
            environ, "RPUSHD_CHANNEL_IDLE_TTL_SECS", 3600, 0, 10**9
        ),
        max_pending_bytes=_whole(
            environ, "RPUSHD_MAX_PENDING_BYTES", 1024 * 1024, 1024, 2**31
        ),
        request_timeout_secs=_whole(
            environ, "RPUSHD_REQUEST_TIMEOUT_SECS", 10, 1, 3600
        ),
        keepalive_timeout_secs=_whole(
            environ, "RPUSHD_KEEPALIVE_TIMEOUT_SECS", 75, 1, 86400
        ),
        shutdown_grace_secs=_whole(environ, "RPUSHD_SHUTDOWN_GRACE_SECS", 5, 0, 3600),
        log_level=_log_level(environ),
        history_size=_whole(environ, "RPUSHD_HISTORY_SIZE", 100, 0, 100_000),
        history_ttl_secs=_whole(environ, "RPUSHD_HISTORY_TTL_SECS", 300, 1, 86400),
        history_max_bytes=_whole(
            environ, "RPUSHD_HISTORY_MAX_BYTES", 64 * 1024 * 1024, 0, 2**40
        ),
        max_channels_per_stream=_whole(
            environ, "RPUSHD_MAX_CHANNELS_PER_STREAM", 32, 1, 1000
        ),
        secret_previous=_optional_secret(environ, "RPUSHD_SECRET_PREVIOUS"),
        publish_secret_previous=_optional_secret(
            environ, "RPUSHD_PUBLISH_SECRET_PREVIOUS"
        ),
        drain_secs=_whole(environ, "RPUSHD_DRAIN_SECS", 3, 0, 3600),
        max_connections=_whole(
            environ,
            "RPUSHD_MAX_CONNECTIONS",
            0,
            0,
            10**7,
            zero_means="as many as the open-file limit allows, less 64",
        ),
        enforce_token_expiry=_flag(environ, "RPUSHD_ENFORCE_TOKEN_EXPIRY"),
        log_format=_choice(environ, "RPUSHD_LOG_FORMAT", LOG_FORMATS),
        unknown_variables=tuple(_unknown_variables(environ)),
    )


def warnings(config: Config) -> list[str]:
    """Settings that work but that an operator should fix."""
    found = []
    named = [
        ("RPUSHD_SECRET", config.secret),
        ("RPUSHD_PUBLISH_SECRET", config.publish_secret),
        ("RPUSHD_SECRET_PREVIOUS", config.secret_previous),
        ("RPUSHD_PUBLISH_SECRET_PREVIOUS", config.publish_secret_previous),
    ]
    for name, secret in named:
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            found.append(
                f"{name} is shorter than {MIN_SECRET_BYTES} bytes; "
                "generate one with: rpushd secret"
            )
    if config.secret == config.publish_secret:
        found.append(
            "RPUSHD_SECRET and RPUSHD_PUBLISH_SECRET are equal: anyone who can "
            "subscribe could publish"
        )
    for name in config.unknown_variables:
        found.append(_unknown_warning(name))
    return found


def _unknown_variables(environ: Mapping[str, str]) -> Iterator[str]:
    for name in sorted(environ):
        if not name.startswith("RPUSHD_") or name in SETTINGS:
            continue
        if not name.startswith(TOOLING_PREFIXES):
            yield name


def _unknown_warning(name: str) -> str:
    warning = f"{name} is not an rpushd setting and is ignored"
    # Compared without the prefix that every name shares, which would make
    # any two names look alike.
    words = {setting.removeprefix("RPUSHD_"): setting for setting in SETTINGS}
    close = difflib.get_close_matches(name.removeprefix("RPUSHD_"), words, n=1)
    if close:
        return f"{warning}; did you mean {words[close[0]]}?"
    return f"{warning}; check its spelling"


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``IP:PORT`` (IPv6 as ``[::1]:PORT``) into host and port."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    # A port has at most 5 digits; checking first also keeps int() away
    # from strings long enough for it to refuse.
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not sep or not digits:
        raise ConfigError(f"RPUSHD_LISTEN must be IP:PORT, got {value!r}")

    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        family = 6
    else:
        family = 4

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"RPUSHD_LISTEN needs a literal IP address, got {value!r}"
        ) from None
    if address.version != family:
        raise ConfigError(f"RPUSHD_LISTEN: write IPv6 as [addr]:port, got {value!r}")

    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"RPUSHD_LISTEN port out of range, got {value!r}")
    return str(address), port


def format_address(host: str, port: int) -> str:
    """Render a host and port as ``IP:PORT``, bracketing IPv6."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def loopback_if_wildcard(host: str) -> str:
    """Where to connect to reach a socket listening on ``host``.

    A socket on every interface (``0.0.0.0`` or ``::``) is reachable on
    loopback; any other address is reached at itself.
    """
    if host == "0.0.0.0":
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def read_env_file(path: str | Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines the way systemd's ``EnvironmentFile=`` does.

    Blank lines and lines starting with ``#`` or ``;`` are skipped, a line
    ending in a backslash goes on at the next one, a value may be wrapped in
    matching single or double quotes, and an optional ``export`` prefix is
    tolerated so that shell-style files work too. Unlike systemd, other
    backslashes are kept as written and a quoted value cannot span lines.
    """
    values: dict[str, str] = {}
    for number, line in _logical_lines(_read_text(path)):
        line = line.strip()
        if not line or line[0] in "#;":
            continue

        key, sep, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        if not sep or not key.replace("_", "a").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")

        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _read_text(path: str | Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc}") from None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None
    # Editors on Windows start UTF-8 files with a byte order mark, which
    # would otherwise become part of the first key.
    return text.removeprefix("\ufeff")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with their continuations joined, each with its first number."""
    joined: list[str] = []
    first = 1
    # Only line feeds end a line, as for systemd: str.splitlines() would
    # also split at form feeds and Unicode separators inside a value.
    for number, line in enumerate(text.split("\n"), start=1):
        if not joined:
            first = number
            # Since systemd 254 a comment ends at its line, backslash or not.
            if line.lstrip().startswith(("#", ";")):
                yield number, line
                continue

        # An odd run of backslashes ends in one that escapes the line feed,
        # which systemd drops along with that backslash; an even run is
        # escaped backslashes only.
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            joined.append(line[:-1])
            continue
        yield first, "".join(joined) + line
        joined = []
    if joined:
        yield first, "".join(joined)


def secret_from(
    environ: Mapping[str, str], name: str, hint: str = MAKE_A_SECRET
) -> bytes:
    """The trimmed, non-empty secret in variable ``name``.

    ``hint`` ends the error for a missing or empty secret: what to do.
    """
    value = environ.get(name)
    if value is None:
        raise ConfigError(f"{name} is required; {hint}")

    value = value.strip()
    if not value:
        raise ConfigError(f"{name} must not be empty; {hint}")
    # os.environ carries bytes that are not UTF-8 as lone surrogates. A
    # secret has to be typed into the application's configuration too, so
    # refuse it here rather than guess at its bytes.
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} must be valid UTF-8") from None


def _whole(
    environ: Mapping[str, str],
    name: str,
    default: int,
    low: int,
    high: int,
    *,
    zero_means: str = "",
) -> int:
    """The whole number in ``name``; ``zero_means`` explains a special 0."""
    value = environ.get(name)
    if value is None:
        return default

    text = value.strip()
    # An error should say what 0 means where it is allowed and special,
    # since an operator looking for "no limit" would not guess it.
    note = f" (0: {zero_means})" if zero_means else ""
    # Bounded length first: int() refuses strings of thousands of digits
    # with ValueError, and no setting needs more than a dozen.
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise ConfigError(f"{name} must be a whole number{note}, got {value[:40]!r}")

    number = int(text)
    if not low <= number <= high:
        raise ConfigError(
            f"{name} must be between {low} and {high}{note}, got {number}"
        )
    return number


def _log_level(environ: Mapping[str, str]) -> str:
    return _choice(environ, "RPUSHD_LOG_LEVEL", LOG_LEVELS, default="info")


def _choice(
    environ: Mapping[str, str],
    name: str,
    choices: tuple[str, ...],
    default: str | None = None,
) -> str:
    value = environ.get(name, default or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value not in TRUTHY + FALSY:
        raise ConfigError(f"{name} must be 1, true, yes, on, 0, false, no or off")
    return value in TRUTHY


def _optional_secret(environ: Mapping[str, str], name: str) -> bytes | None:
    # Set but empty means unset, so that a rotation can be finished by
    # blanking the line in the env file.
    if not environ.get(name, "").strip():
        return None
    return secret_from(environ, name)


def _with_previous(current: bytes, previous: bytes | None) -> tuple[bytes, ...]:
    return (current,) if previous is None else (current, previous)


def logging_level(config: Config) -> int:
    """The :mod:`logging` level for ``config.log_level``."""
    return int(logging.getLevelName(config.log_level.upper()))
