"""Configuration from the environment and from env files."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from rpushd import config
from rpushd.errors import ConfigError

REQUIRED = {"RPUSHD_SECRET": "subscribe-secret", "RPUSHD_PUBLISH_SECRET": "pub"}


def load(**values: str) -> config.Config:
    return config.load({**REQUIRED, **values})


# Defaults.


def test_only_the_two_secrets_are_required_and_the_rest_has_defaults() -> None:
    settings = config.load(REQUIRED)
    assert (settings.host, settings.port) == ("127.0.0.1", 45831)
    assert settings.listen == "127.0.0.1:45831"
    assert settings.secret == b"subscribe-secret"
    assert settings.publish_secret == b"pub"
    assert settings.heartbeat_secs == 15
    assert settings.channel_idle_ttl_secs == 3600


def test_numeric_settings_are_read_as_whole_seconds() -> None:
    settings = load(RPUSHD_HEARTBEAT_SECS="1", RPUSHD_CHANNEL_IDLE_TTL_SECS=" 60 ")
    assert settings.heartbeat_secs == 1
    assert settings.channel_idle_ttl_secs == 60


# RPUSHD_LISTEN.


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:45831", "127.0.0.1", 45831),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("10.1.2.3:65535", "10.1.2.3", 65535),
        ("[::1]:45831", "::1", 45831),
        ("[::]:8080", "::", 8080),
    ],
)
def test_listen_accepts_ip_and_port(value: str, host: str, port: int) -> None:
    assert config.parse_listen(value) == (host, port)


def test_listen_in_ipv6_form_is_rendered_back_with_brackets() -> None:
    assert load(RPUSHD_LISTEN="[::1]:45831").listen == "[::1]:45831"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "127.0.0.1",
        "127.0.0.1:",
        ":45831",
        "[::1]",
        "::1:45831",
        "[127.0.0.1]:45831",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:http",
        "127.0.0.1:4583 1",
        "127.0.0.1:\u0664\u0665",
        "127.0.0.1:65536",
        "127.0.0.1:99999999999999999999",
        "localhost:45831",
        "example.com:80",
        "[localhost]:80",
        "127.1:80",
    ],
)
def test_listen_refuses_anything_but_a_literal_ip_and_port(value: str) -> None:
    with pytest.raises(ConfigError, match="RPUSHD_LISTEN"):
        config.parse_listen(value)


def test_listen_with_a_hostname_stops_loading_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="RPUSHD_LISTEN"):
        load(RPUSHD_LISTEN="localhost:45831")


# Secrets.


@pytest.mark.parametrize("name", ["RPUSHD_SECRET", "RPUSHD_PUBLISH_SECRET"])
def test_secret_is_trimmed_of_surrounding_whitespace(name: str) -> None:
    settings = load(**{name: " \t s3cret value \r\n"})
    field = "secret" if name == "RPUSHD_SECRET" else "publish_secret"
    assert getattr(settings, field) == b"s3cret value"


@pytest.mark.parametrize("name", ["RPUSHD_SECRET", "RPUSHD_PUBLISH_SECRET"])
@pytest.mark.parametrize("value", ["", "   ", " \t\r\n "])
def test_secret_empty_after_trimming_is_an_error_naming_it(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        load(**{name: value})


@pytest.mark.parametrize("name", ["RPUSHD_SECRET", "RPUSHD_PUBLISH_SECRET"])
def test_missing_secret_is_an_error_naming_it(name: str) -> None:
    environ = {**REQUIRED}
    del environ[name]
    with pytest.raises(ConfigError, match=name):
        config.load(environ)


@pytest.mark.parametrize("name", ["RPUSHD_SECRET", "RPUSHD_PUBLISH_SECRET"])
def test_secret_that_is_not_valid_utf8_is_an_error_naming_it(name: str) -> None:
    # os.environ carries undecodable bytes as lone surrogates (PEP 383).
    with pytest.raises(ConfigError, match=name):
        load(**{name: "s\udcff"})


def test_secret_error_does_not_echo_the_other_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load({"RPUSHD_SECRET": "do-not-print-me", "RPUSHD_PUBLISH_SECRET": ""})
    assert "do-not-print-me" not in str(caught.value)


# Whole-second settings.


def test_heartbeat_of_zero_seconds_is_rejected() -> None:
    with pytest.raises(ConfigError, match="RPUSHD_HEARTBEAT_SECS"):
        load(RPUSHD_HEARTBEAT_SECS="0")


@pytest.mark.parametrize(
    "name", ["RPUSHD_HEARTBEAT_SECS", "RPUSHD_CHANNEL_IDLE_TTL_SECS"]
)
@pytest.mark.parametrize("value", ["", "abc", "1.5", "-3", "1e3", "0x10", "\u0665"])
def test_non_numeric_seconds_are_rejected_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        load(**{name: value})


# Env files.


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rpushd.env"
    path.write_text(text, encoding="utf-8")
    return path


def test_env_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "# a comment\n\n; another\n   \nA=1\n  # indented\n")
    assert config.read_env_file(path) == {"A": "1"}


def test_env_file_unwraps_matching_quotes_only(tmp_path: Path) -> None:
    text = "DOUBLE=\"two words\"\nSINGLE='it is'\nMIXED=\"open'\nBARE=plain\n"
    assert config.read_env_file(write(tmp_path, text)) == {
        "DOUBLE": "two words",
        "SINGLE": "it is",
        "MIXED": "\"open'",
        "BARE": "plain",
    }


def test_env_file_tolerates_an_export_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, "export RPUSHD_LISTEN=127.0.0.1:1\n")
    assert config.read_env_file(path) == {"RPUSHD_LISTEN": "127.0.0.1:1"}


def test_env_file_trims_around_key_and_value_and_keeps_later_equals(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "  KEY =  a=b=c  \nEMPTY=\n")
    assert config.read_env_file(path) == {"KEY": "a=b=c", "EMPTY": ""}


def test_env_file_later_line_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "A=1\nA=2\n")
    assert config.read_env_file(path) == {"A": "2"}


@pytest.mark.parametrize("line", ["just words", "=value", "BAD KEY=1", "A-B=1"])
def test_env_file_bad_line_is_an_error_naming_file_and_line(
    tmp_path: Path, line: str
) -> None:
    path = write(tmp_path, f"# header\nGOOD=1\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:3")):
        config.read_env_file(path)


def test_missing_env_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.env"
    with pytest.raises(ConfigError, match="absent"):
        config.read_env_file(path)


def test_env_file_values_load_like_the_environment(tmp_path: Path) -> None:
    text = (
        "export RPUSHD_SECRET=' padded '\n"
        'RPUSHD_PUBLISH_SECRET="pub"\n'
        "RPUSHD_LISTEN=[::1]:9000\n"
    )
    settings = config.load(config.read_env_file(write(tmp_path, text)))
    assert settings.secret == b"padded"
    assert settings.publish_secret == b"pub"
    assert (settings.host, settings.port) == ("::1", 9000)


def test_env_file_starting_with_a_byte_order_mark_reads_its_first_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rpushd.env"
    path.write_bytes(b"\xef\xbb\xbfRPUSHD_SECRET=s\nRPUSHD_LOG_LEVEL=debug\n")
    assert config.read_env_file(path) == {
        "RPUSHD_SECRET": "s",
        "RPUSHD_LOG_LEVEL": "debug",
    }


def test_env_file_line_ending_in_a_backslash_goes_on_at_the_next(
    tmp_path: Path,
) -> None:
    # As systemd joins them: the backslash and the line feed go, and the
    # next line's leading spaces stay, inside the value.
    text = "A=first\\\n  second\nB=\\\nalone\nC=x\\\ny\\\nz\nD=end\\"
    assert config.read_env_file(write(tmp_path, text)) == {
        "A": "first  second",
        "B": "alone",
        "C": "xyz",
        "D": "end",
    }


def test_env_file_continued_line_may_hold_a_quoted_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'A="two \\\nwords"\n')
    assert config.read_env_file(path) == {"A": "two words"}


def test_env_file_even_backslashes_at_the_end_do_not_continue_the_line(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "A=x\\\\\nB=y\n")
    assert config.read_env_file(path) == {"A": "x\\\\", "B": "y"}


def test_env_file_comment_ending_in_a_backslash_ends_at_its_line(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "# a comment \\\nA=1\n")
    assert config.read_env_file(path) == {"A": "1"}


def test_env_file_error_in_a_continued_line_names_its_first_line(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "A=1\nnot \\\na setting\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2:")):
        config.read_env_file(path)


def test_env_file_that_is_not_utf8_is_an_error_naming_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "latin1.env"
    path.write_bytes("A=1\n# caf\u00e9\nB=2\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        config.read_env_file(path)
    assert str(caught.value).startswith(f"{path}:2: not valid UTF-8 (byte 0xe9)")
    assert "codec" not in str(caught.value)


# Unknown variables.


class Recording(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_the_listed_settings_are_exactly_the_variables_load_reads() -> None:
    environ = Recording(REQUIRED)
    config.load(environ)
    assert environ.asked == set(config.SETTINGS)


def test_unknown_rpushd_variables_are_warned_about_by_name() -> None:
    settings = load(RPUSHD_TYPO="1", RPUSHD_HEARTBEAT_SEC="5")
    assert settings.heartbeat_secs == 15
    found = config.warnings(settings)
    assert (
        "RPUSHD_HEARTBEAT_SEC is not an rpushd setting and is ignored; "
        "did you mean RPUSHD_HEARTBEAT_SECS?"
    ) in found
    assert (
        "RPUSHD_TYPO is not an rpushd setting and is ignored; check its spelling"
    ) in found


def test_test_tooling_and_other_programs_variables_are_not_warned_about() -> None:
    settings = load(
        RPUSHD_TEST_STRICT="1",
        RPUSHD_TEST_TIMEOUT_UNIT="2",
        RPUSHD_FUZZ_PROFILE="long",
        PATH="/usr/bin",
        rpushd_secret="lowercase is another variable",
    )
    assert not any("not an rpushd setting" in w for w in config.warnings(settings))


# What a special value means.


@pytest.mark.parametrize("value", ["-1", "lots", "10000001"])
def test_max_connections_error_says_what_zero_means(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(RPUSHD_MAX_CONNECTIONS=value)
    message = str(caught.value)
    assert message.startswith("RPUSHD_MAX_CONNECTIONS must be")
    assert "(0: as many as the open-file limit allows, less 64)" in message


def test_max_connections_of_zero_is_accepted_as_the_default() -> None:
    assert load(RPUSHD_MAX_CONNECTIONS="0").max_connections == 0
    assert config.load(REQUIRED).max_connections == 0


@pytest.mark.parametrize("value", [None, "  "])
def test_missing_secret_error_says_how_to_make_one(value: str | None) -> None:
    environ = {**REQUIRED}
    if value is None:
        del environ["RPUSHD_SECRET"]
    else:
        environ["RPUSHD_SECRET"] = value
    with pytest.raises(ConfigError) as caught:
        config.load(environ)
    assert str(caught.value).startswith("RPUSHD_SECRET ")
    assert "generate one with: rpushd secret" in str(caught.value)
    assert "rpushd dev" in str(caught.value)
