"""Request bodies and message payloads under property-based testing.

Whatever a client sends, :func:`decode_object` returns the object or
raises an :class:`HTTPError` with 400 (malformed JSON) or 422 (the wrong
shape); whatever a publisher's message holds, :func:`encode_message`
returns the compact payload, which reads back as the same value, or raises
400 (not encodable) or 413 (too large). Anything else would be a 500.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fuzzing  # noqa: F401  (loads the hypothesis profile)
from rpushd.errors import HTTPError
from rpushd.payloads import MAX_PAYLOAD_BYTES, decode_object, encode_message

FIELD_SETS = [("channel", "message"), ("token",), ("subscriptions",)]
KEYS = ["channel", "message", "token", "subscriptions", "last_id", "envelope"]

# JSON values as a client's parser would hand them over: any integer, any
# finite float, any text (lone surrogates included, which JSON can escape).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(), inner, max_size=4)
    ),
    max_leaves=16,
)


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    """Documents written by hand: odd spacing, escapes, repeats, depth."""
    members = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KEYS) | st.text(max_size=5),
                json_values.map(lambda value: json.dumps(value)),
                st.booleans(),
            ),
            max_size=5,
        )
    )
    space = draw(st.sampled_from(["", " ", "\n\t", "\r\n "]))
    written = []
    for key, value, escaped in members:
        name = json.dumps(key)
        if escaped and key:
            # The same key, spelled with a \\u escape for its first letter.
            name = f'"\\u{ord(key[0]):04x}' + json.dumps(key[1:])[1:]
        written.append(f"{space}{name}{space}:{space}{value}{space}")
    document = "{" + ",".join(written) + "}"
    return document.encode("utf-8", "surrogatepass")


odd_bodies = st.sampled_from(
    [
        b"",
        b" ",
        b"{",
        b"{}",
        b"[]",
        b"null",
        b'"x"',
        b"\xef\xbb\xbf{}",
        b'{"channel": "a", "message": NaN}',
        b'{"channel": "a", "message": Infinity}',
        b'{"channel": "a", "message": 1e400}',
        b'{"channel": "a", "message": ' + b"1" * 5000 + b"}",
        b'{"channel": "a", "message": "\\ud800"}',
        b'{"channel": "a", "message": "\xff"}',
        b'{"channel": "a", "\\u0063hannel": "b", "message": 1}',
        b'{"token": "a"}\x00',
        b'{"token": "a"} {"token": "b"}',
        '{"token": "a"}'.encode("utf-16"),
        '{"token": "a"}'.encode("utf-32"),
    ]
)
deep_bodies = st.builds(
    lambda depth, escape: (
        f'{{"channel": "{escape}", "message": {nested(depth)}}}'
    ).encode(),
    st.sampled_from([254, 255, 256, 1000, 1023, 1024, 1025, 5000]),
    st.sampled_from(["a", "\\u0061"]),
)


@given(
    body=st.binary()
    | json_texts()
    | odd_bodies
    | deep_bodies
    | json_values.map(lambda value: json.dumps(value).encode()),
    fields=st.sampled_from(FIELD_SETS),
)
def test_decode_object_returns_the_object_or_answers_400_or_422(
    body: bytes, fields: tuple[str, ...]
) -> None:
    try:
        value = decode_object(body, fields)
    except HTTPError as exc:
        assert exc.status in (400, 422), exc
        return
    assert isinstance(value, dict)
    assert all(field in value for field in fields)


@given(
    document=st.dictionaries(st.sampled_from(KEYS) | st.text(), json_values),
    fields=st.sampled_from(FIELD_SETS),
)
def test_decode_object_reads_back_an_object_that_has_the_fields(
    document: dict[str, Any], fields: tuple[str, ...]
) -> None:
    for name in fields:
        document.setdefault(name, 1)
    try:
        body = orjson.dumps(document)
    except orjson.JSONEncodeError:
        return  # a surrogate or an integer orjson will not write
    assert decode_object(body, fields) == orjson.loads(body)


@given(key=st.sampled_from(KEYS), first=json_values, second=json_values)
def test_decode_object_refuses_a_repeated_field(
    key: str, first: Any, second: Any
) -> None:
    escaped = f'"\\u{ord(key[0]):04x}{key[1:]}"'
    others = "".join(f', "{name}": 1' for name in KEYS if name != key)
    body = f"{{{json.dumps(key)}: {json.dumps(first)}, {escaped}: "
    body += f"{json.dumps(second)}{others}}}"
    with pytest.raises(HTTPError) as refused:
        decode_object(body.encode("utf-8", "surrogatepass"), (key,))
    assert refused.value.status in (400, 422)


# Messages.

big_texts = st.integers(MAX_PAYLOAD_BYTES - 4, MAX_PAYLOAD_BYTES + 4).map(
    lambda size: "x" * size
)
deep_values = st.integers(250, 260).map(lambda depth: json.loads(nested(depth)))


@given(message=json_values | big_texts | deep_values)
@example(message=2**64)
@example(message=-(2**63) - 1)
@example(message="\ud800")
@example(message={"\udfff": 1})
@example(message="x" * (MAX_PAYLOAD_BYTES - 2))
@example(message="x" * (MAX_PAYLOAD_BYTES - 1))
def test_encode_message_reads_back_or_answers_400_or_413(message: Any) -> None:
    try:
        payload = encode_message(message)
    except HTTPError as exc:
        assert exc.status in (400, 413), exc
        if exc.status == 413:
            assert len(orjson.dumps(message)) > MAX_PAYLOAD_BYTES
        return

    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert orjson.loads(payload) == message
    # Compact: writing what was read gives the same bytes back.
    assert orjson.dumps(orjson.loads(payload)) == payload
    assert not payload.startswith((b" ", b"\n"))


@given(message=st.text(st.characters(exclude_categories=("Cs", "Cc"))))
def test_encode_message_keeps_non_ascii_text_as_utf8(message: str) -> None:
    payload = encode_message(message)
    assert (
        payload
        == b'"'
        + message.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
        + b'"'
    )
