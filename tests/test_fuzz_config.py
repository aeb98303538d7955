"""Configuration under property-based testing (PROTOCOL.md, "Configuration").

A bad setting must stop the daemon with one line naming the variable
(:class:`ConfigError`), whatever the value: the command line turns that
exception, and only that one, into a message without a traceback.
"""

from __future__ import annotations

import inspect
import ipaddress
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fuzzing  # noqa: F401  (loads the hypothesis profile)
from rpushd import config
from rpushd.errors import ConfigError

# Every variable config.py reads, found in its source so that a new one is
# fuzzed without anyone remembering to add it here.
VARIABLES = sorted(set(re.findall(r'"(RPUSHD_[A-Z_]+)"', inspect.getsource(config))))
REQUIRED = {"RPUSHD_SECRET": "s" * 32, "RPUSHD_PUBLISH_SECRET": "p" * 32}

# Values near what each kind of setting accepts, and far from it.
numbers = st.integers(-(10**12), 10**12).map(str) | st.integers(0, 100).map(str)
odd_numbers = st.sampled_from(
    ["", " ", "1.5", "1e3", "0x10", "+1", "-0", "\u0661", "\u00b2", "1_000", "\u0663 "]
)
long_digits = st.integers(4000, 5000).map(lambda size: "1" * size)
addresses = st.builds(
    lambda ip, port: config.format_address(str(ip), port),
    st.ip_addresses(),
    st.integers(0, 70000),
)
words = st.sampled_from(
    ["debug", "INFO", " warning ", "error", "json", "text", "yes", "off", "maybe"]
)
# Lone surrogates are what os.environ holds for bytes that are not UTF-8.
values = (
    st.text()
    | numbers
    | odd_numbers
    | long_digits
    | addresses
    | words
    | st.text(st.characters(codec="utf-8") | st.sampled_from("\udcff\ud800"))
)
environments = st.dictionaries(
    st.sampled_from(VARIABLES) | st.text(max_size=10), values, max_size=8
)


@given(environ=environments, with_secrets=st.booleans())
@example(environ={"RPUSHD_HEARTBEAT_SECS": "1" * 4301}, with_secrets=True)
@example(environ={"RPUSHD_LISTEN": "127.0.0.1:" + "1" * 4301}, with_secrets=True)
def test_load_raises_nothing_but_config_error(
    environ: dict[str, str], with_secrets: bool
) -> None:
    if with_secrets:
        environ = {**REQUIRED, **environ}
    try:
        loaded = config.load(environ)
    except ConfigError as exc:
        assert str(exc), "a config error must say what is wrong"
        return
    assert 0 <= loaded.port <= 65535
    assert loaded.secret and loaded.publish_secret
    config.warnings(loaded)


# Listen addresses.


@given(ip=st.ip_addresses(), port=st.integers(0, 65535))
def test_parse_listen_reads_back_format_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    text = config.format_address(str(ip), port)
    assert config.parse_listen(text) == (str(ip), port)
    if ip.version == 6:
        assert config.parse_listen(f" [{ip.exploded}]:{port:05} ") == (str(ip), port)


@given(
    value=st.text()
    | addresses
    | st.builds("{}:{}".format, st.ip_addresses(), st.integers(0, 70000))
    | st.builds("[{}]:{}".format, st.ip_addresses(), st.integers(0, 70000))
    | st.builds("[fe80::1%{}]:{}".format, st.text(max_size=6), st.integers(0, 65535))
)
@example(value="127.0.0.1:" + "9" * 4301)
def test_parse_listen_is_idempotent_or_refuses(value: str) -> None:
    try:
        host, port = config.parse_listen(value)
    except ConfigError:
        return
    assert config.parse_listen(config.format_address(host, port)) == (host, port)


# Env files.


@pytest.fixture(scope="module")
def env_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "rpushd.env"


@given(
    content=st.binary()
    | st.text().map(lambda text: text.encode("utf-8", "surrogatepass"))
    | st.lists(
        st.tuples(
            st.sampled_from(["", "export ", "#", ";", " ", "export"]),
            st.sampled_from([*VARIABLES, "", "A B", "1X", "\u00e9"]),
            st.sampled_from(["=", " = ", "", "=="]),
            st.text(max_size=12),
        ).map("".join),
        max_size=6,
    ).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))
)
def test_read_env_file_returns_a_dict_or_raises_config_error(
    env_path: Path, content: bytes
) -> None:
    env_path.write_bytes(content)
    try:
        values = config.read_env_file(env_path)
    except ConfigError:
        return
    assert all(isinstance(key, str) and key for key in values)
    assert all(isinstance(value, str) for value in values.values())


keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
# What a value may hold on one line: anything but a line feed or a carriage
# return (read as line ends) and lone surrogates (not UTF-8).
line_values = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\n\r")
)


@given(settings=st.dictionaries(keys, line_values, max_size=6), data=st.data())
@example(settings={"RPUSHD_SECRET": "a\x0cb"}, data=None)
@example(settings={"RPUSHD_SECRET": "a\u2028b"}, data=None)
def test_read_env_file_reads_back_what_was_written(
    env_path: Path, settings: dict[str, str], data: st.DataObject | None
) -> None:
    lines = []
    for key, value in settings.items():
        export = data.draw(st.booleans(), label="export") if data else False
        lines.append(("export " if export else "") + f'{key}="{value}"')
    env_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert config.read_env_file(env_path) == settings
