"""Deliveries, ids and envelopes: literal values in, literal bytes out."""

from __future__ import annotations

import dataclasses
import re

import pytest

from rpushd.deliveries import (
    Delivery,
    Wire,
    close_envelope,
    gap_envelope,
    hello_envelope,
    new_epoch,
    parse_id,
)
from rpushd.frames import PLAIN

EPOCH = "0badcafe"


def counting_wire(calls: list[Delivery]) -> Wire:
    """A wire whose message encoding records every call it gets."""

    def message(delivery: Delivery) -> bytes:
        calls.append(delivery)
        return b"<%s>" % delivery.payload

    return dataclasses.replace(PLAIN, name="counting", message=message)


# Ids.


def test_epoch_is_eight_lowercase_hex_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{8}", new_epoch())


def test_epochs_of_two_runs_differ() -> None:
    assert len({new_epoch() for _ in range(20)}) == 20


def test_delivery_id_is_epoch_dash_sequence() -> None:
    assert Delivery(EPOCH, 42, "room", b"1", 0.0).id == "0badcafe-42"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0badcafe-1", ("0badcafe", 1)),
        ("0badcafe-41", ("0badcafe", 41)),
        ("00000000-0", ("00000000", 0)),
        ("ffffffff-9999999999999999999", ("ffffffff", 9999999999999999999)),
    ],
    ids=["first", "typical", "nothing published yet", "nineteen digits"],
)
def test_parse_id_splits_a_valid_id(text: str, parsed: tuple[str, int]) -> None:
    assert parse_id(text) == parsed


def test_parse_id_reads_back_every_id_a_delivery_gets() -> None:
    epoch = new_epoch()
    for seq in (1, 7, 10**18):
        assert parse_id(Delivery(epoch, seq, "c", b"1", 0.0).id) == (epoch, seq)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0badcafe",
        "0badcafe-",
        "-1",
        "0badcafe-01",
        "0badcafe-00",
        "0BADCAFE-1",
        "0badcaf-1",
        "0badcafe0-1",
        "0badcafg-1",
        "0badcafe--1",
        "0badcafe-+1",
        "0badcafe-1 ",
        " 0badcafe-1",
        "0badcafe-1\n",
        "0badcafe-1.0",
        "0badcafe-\u0661",
        "0badcafe-10000000000000000000",
    ],
    ids=[
        "empty",
        "epoch only",
        "no sequence",
        "no epoch",
        "leading zero",
        "two zeros",
        "uppercase epoch",
        "short epoch",
        "long epoch",
        "non-hex epoch",
        "negative",
        "plus sign",
        "trailing space",
        "leading space",
        "trailing newline",
        "decimal point",
        "non-ascii digit",
        "twenty digits",
    ],
)
def test_parse_id_refuses_malformed_ids(text: str) -> None:
    assert parse_id(text) is None


# Encodings, one per wire.


def test_delivery_encodes_once_per_wire_and_returns_the_same_bytes() -> None:
    calls: list[Delivery] = []
    wire = counting_wire(calls)
    delivery = Delivery(EPOCH, 1, "room", b"7", 0.0)

    first = delivery.encoded(wire)
    second = delivery.encoded(wire)

    assert first == b"<7>"
    assert second is first
    assert calls == [delivery]


def test_delivery_encodes_separately_for_each_wire() -> None:
    calls: list[Delivery] = []
    wire, other = counting_wire(calls), counting_wire(calls)
    delivery = Delivery(EPOCH, 1, "room", b"7", 0.0)

    delivery.encoded(wire)
    delivery.encoded(other)
    delivery.encoded(wire)
    delivery.encoded(other)

    assert len(calls) == 2


def test_footprint_counts_the_payload_and_every_encoding() -> None:
    delivery = Delivery(EPOCH, 1, "room", b"12345", 0.0)
    assert delivery.footprint() == 5
    delivery.encoded(counting_wire([]))
    assert delivery.footprint() == 5 + len(b"<12345>")


# Envelopes.


def test_message_envelope_splices_the_payload_in_as_it_is() -> None:
    delivery = Delivery(EPOCH, 42, "room:1", b'{"b":2,"a":[1,"\xc3\xa9"]}', 0.0)
    assert delivery.envelope() == (
        b'{"type":"message","id":"0badcafe-42","channel":"room:1",'
        b'"message":{"b":2,"a":[1,"\xc3\xa9"]}}'
    )


def test_message_envelope_carries_scalar_payloads() -> None:
    delivery = Delivery(EPOCH, 3, "c", b'"hi"', 0.0)
    assert delivery.envelope() == (
        b'{"type":"message","id":"0badcafe-3","channel":"c","message":"hi"}'
    )


def test_hello_envelope() -> None:
    assert hello_envelope(15, EPOCH, "0badcafe-41") == (
        b'{"type":"hello","heartbeat_secs":15,"epoch":"0badcafe",'
        b'"last_id":"0badcafe-41","replay":0}'
    )
    assert b'"replay":3}' in hello_envelope(15, EPOCH, "0badcafe-41", 3)


@pytest.mark.parametrize("reason", ["too_old", "other_epoch", "unknown"])
def test_gap_envelope(reason: str) -> None:
    assert gap_envelope("room", reason) == (
        b'{"type":"gap","channel":"room","reason":"%s"}' % reason.encode()
    )


@pytest.mark.parametrize("reason", ["shutdown", "token_expired"])
def test_close_envelope(reason: str) -> None:
    assert close_envelope(reason) == (
        b'{"type":"close","reason":"%s"}' % reason.encode()
    )
