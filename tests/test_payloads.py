"""JSON request bodies and message payloads."""

from __future__ import annotations

import pytest

from rpushd.errors import HTTPError
from rpushd.payloads import decode_object, encode_message

FIELDS = ("channel", "message")


def status_of(body: bytes) -> int:
    with pytest.raises(HTTPError) as caught:
        decode_object(body, FIELDS)
    return caught.value.status


# Decoding request bodies.


def test_object_with_the_fields_is_returned_with_extra_fields_kept() -> None:
    body = b'{"channel": "room", "message": {"a": [1, 2]}, "extra": true}'
    assert decode_object(body, FIELDS) == {
        "channel": "room",
        "message": {"a": [1, 2]},
        "extra": True,
    }


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"channel": "a", "message": 1',
        b"{'channel': 'a', 'message': 1}",
        b'{"channel": "a", "message": 1,}',
        b'{"channel": "a", "message": 1} trailing',
        b'{"channel": "a", "message": NaN}',
        b'{"channel": "a", "message": Infinity}',
        b'{"channel": "a", "message": -Infinity}',
        b'{"channel": "a", "message": "\\ud800"}',
        b'{"channel": "a", "message": "\\udc00x"}',
        b'{"channel": "a", "message": "\xff"}',
        b'{"channel": "a", "message": "\xc0\xaf"}',
        b'{"channel": "a", "message": "\xed\xa0\x80"}',
        b'{"channel": "a", "message": 01}',
    ],
    ids=[
        "empty",
        "blank",
        "unclosed",
        "truncated",
        "single quotes",
        "trailing comma",
        "trailing text",
        "NaN",
        "Infinity",
        "-Infinity",
        "lone high surrogate",
        "lone low surrogate",
        "invalid utf-8 byte",
        "overlong utf-8",
        "utf-8 encoded surrogate",
        "leading zero",
    ],
)
def test_malformed_json_answers_400(body: bytes) -> None:
    assert status_of(body) == 400


def test_nesting_past_the_parser_limit_answers_400_without_crashing() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert status_of(b'{"channel": "a", "message": ' + deep + b"}") == 400


def test_verdict_on_deep_nesting_does_not_depend_on_escapes() -> None:
    # PHP's json_encode escapes non-ASCII as \u sequences by default; such a body
    # must be judged like the same body written without escapes.
    deep = b"[" * 1000 + b"]" * 1000
    plain = b'{"channel": "a", "message": [' + deep + b', "e"]}'
    escaped = b'{"channel": "a", "message": [' + deep + b', "\\u0065"]}'
    verdicts = []
    for body in (plain, escaped):
        try:
            decode_object(body, FIELDS)
            verdicts.append(200)
        except HTTPError as exc:
            verdicts.append(exc.status)
    assert verdicts[0] == verdicts[1]


@pytest.mark.parametrize(
    "body",
    [b"[]", b'["channel", "message"]', b'"text"', b"null", b"1", b"true"],
)
def test_json_that_is_not_an_object_answers_422(body: bytes) -> None:
    assert status_of(body) == 422


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"channel": "a"}', b'{"message": 1}', b'{"Channel": "a", "message": 1}'],
)
def test_missing_field_answers_422(body: bytes) -> None:
    assert status_of(body) == 422


@pytest.mark.parametrize(
    "body",
    [
        b'{"channel": "a", "message": 1, "channel": "b"}',
        b'{"channel": "a", "message": 1, "message": 2}',
        b'{"channel": "a", "message": 1, "\\u0063hannel": "b"}',
        b'{"\\u0063hannel": "a", "message": 1, "channel": "b"}',
        b'{"channel": "a", "\\u006d\\u0065ssage": 1, "message": 2}',
    ],
    ids=["channel", "message", "escaped second", "escaped first", "escaped"],
)
def test_field_given_twice_answers_422(body: bytes) -> None:
    assert status_of(body) == 422


@pytest.mark.parametrize(
    "body",
    [
        b'{"channel": "a", "message": {"k": 1, "k": 2}}',
        b'{"channel": "a", "message": {"channel": "b", "channel": "c"}}',
        b'{"channel": "a", "message": {"\\u006b": 1, "k": 2}}',
        b'{"channel": "a", "message": [{"channel": 1}, {"channel": 2}]}',
    ],
    ids=["plain", "field names", "escaped", "in a list"],
)
def test_duplicate_key_inside_the_message_is_accepted(body: bytes) -> None:
    assert decode_object(body, FIELDS)["channel"] == "a"


def test_field_spelled_with_escapes_counts_as_that_field() -> None:
    body = b'{"\\u0063hannel": "a", "message": 1}'
    assert decode_object(body, FIELDS)["channel"] == "a"


# Encoding message payloads.


def test_message_is_re_encoded_compactly() -> None:
    body = b'{ "channel" : "a" , "message" : { "b" : [ 1 , 2.5 , null ] } }'
    message = decode_object(body, FIELDS)["message"]
    assert encode_message(message) == b'{"b":[1,2.5,null]}'


def test_message_keeps_non_ascii_as_utf8_not_escapes() -> None:
    body = (
        b'{"channel": "a", "message": {"t": "caf\\u00e9 \xe2\x82\xac \\ud83d\\ude00"}}'
    )
    message = decode_object(body, FIELDS)["message"]
    assert encode_message(message) == '{"t":"café € 😀"}'.encode()


def test_message_keeps_the_order_of_its_keys() -> None:
    assert encode_message({"z": 1, "a": 2}) == b'{"z":1,"a":2}'


@pytest.mark.parametrize(
    ("message", "payload"),
    [(None, b"null"), (True, b"true"), (7, b"7"), ("s", b'"s"'), ([], b"[]")],
)
def test_any_json_value_is_a_message(message: object, payload: bytes) -> None:
    assert encode_message(message) == payload


def test_payload_of_exactly_65535_bytes_is_accepted() -> None:
    assert len(encode_message("x" * 65533)) == 65535


def test_payload_of_65536_bytes_answers_413() -> None:
    with pytest.raises(HTTPError) as caught:
        encode_message("x" * 65534)
    assert caught.value.status == 413


def test_payload_size_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(HTTPError) as caught:
        encode_message("é" * 32767)
    assert caught.value.status == 413
