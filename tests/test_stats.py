"""Stats renderings, checked against the contract's exact shapes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from rpushd import stats
from rpushd.stats import ChannelFigures, Snapshot

# The contract's figures, in the contract's order.
CONTRACT_FIGURES: dict[str, Any] = {
    "version": "1.0.0",
    "repository_url": "https://example.org/rpushd",
    "started_at": 1800000000,
    "uptime_seconds": 42,
    "active_channels": 2,
    "retained_channels": 3,
    "active_stream_connections": 4,
    "active_subscribers": 5,
    "stream_connections_total": 6,
    "publish_requests_total": 7,
    "published_bytes_total": 8,
    "auth_failures_total": 9,
    "memory_rss_bytes": 10240,
}

CONTRACT_TEXT_LINES = [
    "rpushd stats",
    "version: 1.0.0",
    "repository: https://example.org/rpushd",
    "started_at: 1800000000",
    "uptime_seconds: 42",
    "active_channels: 2",
    "retained_channels: 3",
    "active_stream_connections: 4",
    "active_subscribers: 5",
    "stream_connections_total: 6",
    "publish_requests_total: 7",
    "published_bytes_total: 8",
    "auth_failures_total: 9",
    "memory_rss_bytes: 10240",
]

CONTRACT_ELEMENTS = [
    "version",
    "repositoryUrl",
    "startedAt",
    "uptimeSeconds",
    "activeChannels",
    "retainedChannels",
    "activeStreamConnections",
    "activeSubscribers",
    "streamConnectionsTotal",
    "publishRequestsTotal",
    "publishedBytesTotal",
    "authFailuresTotal",
    "memoryRssBytes",
]

HIDDEN = "channels: hidden (use ?verbose=1 to include channel details)"

CHANNELS = [
    ChannelFigures("busy", 3, 0),
    ChannelFigures("quiet", 1, 12),
    ChannelFigures("empty", 0, 300),
]


def snapshot(
    *,
    verbose: bool = False,
    channels: list[ChannelFigures] | None = None,
    **figures: Any,
) -> Snapshot:
    # Figures of ours beyond the contract are filled with zeros.
    values: dict[str, Any] = {key: 0 for key, _ in stats.FIGURES}
    values.update(CONTRACT_FIGURES)
    values.update(figures)
    listed = (channels if channels is not None else CHANNELS) if verbose else []
    return Snapshot(values, listed, verbose)


# Text.


def test_text_starts_with_the_title_then_the_contract_figures_in_order() -> None:
    lines = stats.render_text(snapshot()).decode("utf-8").splitlines()
    assert lines[: len(CONTRACT_TEXT_LINES)] == CONTRACT_TEXT_LINES


def test_text_labels_the_url_line_repository() -> None:
    text = stats.render_text(snapshot()).decode("utf-8")
    assert "\nrepository: https://example.org/rpushd\n" in text
    assert "repository_url" not in text


def test_text_writes_unknown_memory_as_unknown() -> None:
    lines = stats.render_text(snapshot(memory_rss_bytes=None)).decode().splitlines()
    assert "memory_rss_bytes: unknown" in lines


def test_text_without_verbose_ends_with_the_hidden_channels_line() -> None:
    lines = stats.render_text(snapshot()).decode("utf-8").splitlines()
    assert lines[-1] == HIDDEN
    assert not any(line.startswith("- ") for line in lines)


def test_text_with_verbose_lists_one_line_per_channel_after_the_header() -> None:
    lines = stats.render_text(snapshot(verbose=True)).decode("utf-8").splitlines()
    assert lines[-4:] == [
        "channels:",
        "- busy | subscribers=3 | idle_seconds=0",
        "- quiet | subscribers=1 | idle_seconds=12",
        "- empty | subscribers=0 | idle_seconds=300",
    ]


def test_text_with_verbose_and_no_channels_ends_with_the_bare_header() -> None:
    text = stats.render_text(snapshot(verbose=True, channels=[])).decode("utf-8")
    assert text.splitlines()[-1] == "channels:"


def test_text_is_utf8_with_one_newline_per_line() -> None:
    body = stats.render_text(snapshot(verbose=True))
    assert body.endswith(b"\n") and not body.endswith(b"\n\n")
    assert b"\r" not in body


# JSON.


def test_json_holds_every_contract_figure_under_its_snake_case_key() -> None:
    document = json.loads(stats.render_json(snapshot()))
    for key, value in CONTRACT_FIGURES.items():
        assert document[key] == value, key


def test_json_has_no_camel_case_keys() -> None:
    document = json.loads(stats.render_json(snapshot()))
    assert all(key == key.lower() for key in document), sorted(document)
    assert "repository" not in document


def test_json_writes_unknown_memory_as_null() -> None:
    document = json.loads(stats.render_json(snapshot(memory_rss_bytes=None)))
    assert "memory_rss_bytes" in document
    assert document["memory_rss_bytes"] is None


def test_json_without_verbose_has_an_empty_channels_list() -> None:
    assert json.loads(stats.render_json(snapshot()))["channels"] == []


def test_json_with_verbose_lists_channels_as_objects() -> None:
    document = json.loads(stats.render_json(snapshot(verbose=True)))
    assert document["channels"] == [
        {"name": "busy", "subscribers": 3, "idle_seconds": 0},
        {"name": "quiet", "subscribers": 1, "idle_seconds": 12},
        {"name": "empty", "subscribers": 0, "idle_seconds": 300},
    ]


def test_json_figures_other_than_version_and_url_are_numbers() -> None:
    document = json.loads(stats.render_json(snapshot()))
    for key in CONTRACT_FIGURES:
        if key not in ("version", "repository_url"):
            assert type(document[key]) is int, key


# XML.


def test_xml_opens_with_a_declaration_and_a_stats_root() -> None:
    body = stats.render_xml(snapshot())
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert ElementTree.fromstring(body).tag == "stats"


def test_xml_has_one_camel_case_element_per_figure_in_contract_order() -> None:
    root = ElementTree.fromstring(stats.render_xml(snapshot()))
    tags = [child.tag for child in root]
    assert tags[: len(CONTRACT_ELEMENTS)] == CONTRACT_ELEMENTS
    assert tags[-1] == "channels"
    assert root.findtext("startedAt") == "1800000000"
    assert root.findtext("repositoryUrl") == "https://example.org/rpushd"
    assert root.findtext("memoryRssBytes") == "10240"


def test_xml_leaves_unknown_memory_empty() -> None:
    root = ElementTree.fromstring(stats.render_xml(snapshot(memory_rss_bytes=None)))
    assert root.find("memoryRssBytes") is not None
    assert not root.findtext("memoryRssBytes")


def test_xml_without_verbose_has_an_empty_channels_element() -> None:
    root = ElementTree.fromstring(stats.render_xml(snapshot()))
    channels = root.find("channels")
    assert channels is not None and len(channels) == 0


def test_xml_with_verbose_lists_name_subscribers_and_idle_seconds() -> None:
    root = ElementTree.fromstring(stats.render_xml(snapshot(verbose=True)))
    listed = [
        [(field.tag, field.text) for field in channel]
        for channel in root.iterfind("channels/channel")
    ]
    assert listed == [
        [("name", "busy"), ("subscribers", "3"), ("idleSeconds", "0")],
        [("name", "quiet"), ("subscribers", "1"), ("idleSeconds", "12")],
        [("name", "empty"), ("subscribers", "0"), ("idleSeconds", "300")],
    ]


def test_xml_escapes_markup_in_text() -> None:
    crafted = snapshot(
        verbose=True,
        channels=[ChannelFigures("a<b&c>", 1, 0)],
        version="1.0<beta>&",
        repository_url="https://example.org/?a=1&b=<2>",
    )
    body = stats.render_xml(crafted)
    assert b"&amp;" in body and b"&lt;" in body
    root = ElementTree.fromstring(body)
    assert root.findtext("version") == "1.0<beta>&"
    assert root.findtext("repositoryUrl") == "https://example.org/?a=1&b=<2>"
    assert root.findtext("channels/channel/name") == "a<b&c>"


# Ordering channels.


def test_channels_sort_by_subscribers_descending_then_name_ascending() -> None:
    unsorted = [
        ChannelFigures("b", 1, 0),
        ChannelFigures("z", 0, 0),
        ChannelFigures("a", 1, 0),
        ChannelFigures("c", 5, 0),
    ]
    names = [channel.name for channel in stats.sort_channels(unsorted)]
    assert names == ["c", "a", "b", "z"]


def test_channel_names_tie_break_by_code_point_like_byte_order() -> None:
    unsorted = [ChannelFigures(name, 1, 0) for name in ["b", "B", "a", "_", "1"]]
    names = [channel.name for channel in stats.sort_channels(unsorted)]
    assert names == ["1", "B", "_", "a", "b"]


# Memory.


def test_rss_is_read_from_vmrss_in_kib(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\trpushd\nVmPeak:\t  9999 kB\nVmRSS:\t    1234 kB\n")
    assert stats.read_rss_bytes(str(status)) == 1234 * 1024


def test_rss_of_a_missing_status_file_is_unknown(tmp_path: Path) -> None:
    assert stats.read_rss_bytes(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    "text", ["Name:\trpushd\n", "VmRSS:\n", "VmRSS:\tmany kB\n", ""]
)
def test_rss_of_a_status_file_without_a_readable_vmrss_is_unknown(
    tmp_path: Path, text: str
) -> None:
    status = tmp_path / "status"
    status.write_text(text)
    assert stats.read_rss_bytes(str(status)) is None


def test_rss_of_this_process_is_known_on_linux() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc on this system")
    rss = stats.read_rss_bytes()
    assert rss is not None and rss > 0
