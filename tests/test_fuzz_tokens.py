"""Subscribe tokens under property-based testing (PROTOCOL.md, "Subscribe tokens").

Whatever it is handed, :func:`rpushd.tokens.verify` either accepts or
raises :class:`InvalidToken`, never anything else; it accepts exactly the
tokens the contract calls valid, and every alteration of a valid token is
refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st

import fuzzing  # noqa: F401  (loads the hypothesis profile)
from rpushd import tokens
from rpushd.errors import InvalidToken
from rpushd.tokens import U64_MAX

NOW = 1_800_000_000
SECRET = b"fuzz-subscribe-secret"

# orjson cannot encode lone surrogates, and neither would any client.
texts = st.text(st.characters(exclude_categories=("Cs",)))
channels = texts | st.from_regex(r"[A-Za-z0-9:._-]{1,191}", fullmatch=True)
secrets = st.binary(max_size=80)
expiries = st.integers(0, U64_MAX)

# JSON values orjson reads back as they were written: integers in its
# exact range, finite floats, no lone surrogates.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), U64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=12,
)
# What a claim may hold instead of the right value.
wrong_claims = (
    json_values
    | st.sampled_from(["rpushd ", "RPUSHD", "Subscribe", "", "subscribe\x00"])
    | st.sampled_from([-1, U64_MAX + 1, 2**70, 1.0, 1e19, "1", True, False])
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: bytes, payload: bytes, secret: bytes = SECRET) -> str:
    unsigned = b64(header) + "." + b64(payload)
    mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + b64(mac)


def verdict(token: str | bytes, channel: str, now: int = NOW) -> int | str:
    """The expiry ``verify`` returns, or the reason it refused."""
    try:
        return tokens.verify(token, channel, [SECRET], now)
    except InvalidToken as exc:
        return "refused: " + exc.reason


# Round trip.


@given(channel=channels, secret=secrets, exp=expiries, data=st.data())
def test_minted_token_is_accepted_until_it_expires(
    channel: str, secret: bytes, exp: int, data: st.DataObject
) -> None:
    token = tokens.mint(channel, secret, exp)
    now = data.draw(st.integers(0, exp), label="now")

    assert tokens.verify(token, channel, [secret], now) == exp
    assert tokens.verify(token.encode(), channel, [b"older", secret], now) == exp
    if exp < U64_MAX:
        with pytest.raises(InvalidToken):
            tokens.verify(token, channel, [secret], exp + 1)


@given(channel=channels, other=channels, secret=secrets, wrong=secrets)
@example(channel="a", other="b", secret=b"k", wrong=b"k\0")
@example(
    channel="a", other="b", secret=bytes(65), wrong=hashlib.sha256(bytes(65)).digest()
)
def test_minted_token_is_refused_elsewhere_and_under_another_secret(
    channel: str, other: str, secret: bytes, wrong: bytes
) -> None:
    token = tokens.mint(channel, secret, U64_MAX)
    if other != channel:
        with pytest.raises(InvalidToken):
            tokens.verify(token, other, [secret], NOW)
    if hmac_key(wrong) != hmac_key(secret):
        with pytest.raises(InvalidToken):
            tokens.verify(token, channel, [wrong], NOW)


def hmac_key(secret: bytes) -> bytes:
    """The key HMAC really uses (RFC 2104, section 2).

    A key longer than the hash's 64-byte block is hashed first, and a
    shorter one is padded with zero bytes, so ``b"k"`` and ``b"k\\0"`` sign
    alike. No environment variable can hold a zero byte, so that is no
    weakness of the daemon's secrets.
    """
    if len(secret) > 64:
        secret = hashlib.sha256(secret).digest()
    return secret.rstrip(b"\0")


# Alterations of a valid token.

TOKEN_CHARS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    "=+/. \x00\u00e9\U0001f600\ud800"
)


@st.composite
def altered(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    how = draw(
        st.sampled_from(
            ["flip", "truncate", "pad", "swap", "insert", "delete", "split", "join"]
        )
    )
    if how == "flip":
        at = draw(st.integers(0, len(token) - 1))
        char = draw(st.sampled_from(TOKEN_CHARS).filter(lambda c: c != token[at]))
        return token[:at] + char + token[at + 1 :]
    if how == "truncate":
        return token[: draw(st.integers(0, len(token) - 1))]
    if how == "pad":
        at = draw(st.integers(0, 2))
        parts[at] += draw(st.sampled_from(["=", "==", "==="]))
    elif how == "swap":
        first, second = draw(st.permutations(range(3)).filter(lambda p: p[0] != 0))[:2]
        parts[first], parts[second] = parts[second], parts[first]
    elif how == "insert":
        at = draw(st.integers(0, len(token)))
        return token[:at] + draw(st.text(TOKEN_CHARS, min_size=1)) + token[at:]
    elif how == "delete":
        at = draw(st.integers(0, len(token) - 1))
        return token[:at] + token[at + draw(st.integers(1, 4)) :]
    elif how == "split":
        parts.insert(draw(st.integers(0, 3)), draw(st.sampled_from(["", "e30", "x"])))
    else:
        at = draw(st.integers(0, 1))
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return ".".join(parts)


@given(channel=channels, exp=expiries, data=st.data())
def test_every_alteration_of_a_valid_token_is_refused(
    channel: str, exp: int, data: st.DataObject
) -> None:
    token = tokens.mint(channel, SECRET, exp)
    changed = data.draw(altered(token), label="altered")
    assume(changed != token)

    with pytest.raises(InvalidToken):
        tokens.verify(changed, channel, [SECRET], 0)


# Anything at all.

dotted = st.lists(st.text(TOKEN_CHARS) | texts, min_size=1, max_size=5).map(".".join)


@given(token=st.text() | st.binary() | dotted, channel=channels)
@example(token="..", channel="a")
@example(token=b"\xff.\xff.\xff", channel="a")
@example(token="\ud800.a.b", channel="a")
def test_arbitrary_input_is_only_ever_refused(token: str | bytes, channel: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(token, channel, [SECRET, b""], NOW)


# Correctly signed payloads of every shape.


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in ``n`` draws (integers() would favour small numbers)."""
    return st.sampled_from(range(n)).map(lambda roll: roll == 0)


@st.composite
def claim_lists(draw: st.DrawFn, channel: str) -> list[tuple[str, Any]]:
    """Claims as written, in order, possibly missing, wrong or repeated."""
    right: dict[str, Any] = {"aud": "rpushd", "scope": "subscribe"}
    right["channel"] = channel
    right["exp"] = draw(st.sampled_from([NOW, NOW + 1, U64_MAX, NOW - 1, 0]))
    claims: list[tuple[str, Any]] = []
    for name, value in right.items():
        if draw(one_in(20)):
            continue  # missing
        if draw(one_in(16)):
            value = draw(wrong_claims)
        claims.append((name, value))
    claims += draw(st.lists(st.tuples(texts, json_values), max_size=3))
    if claims and draw(one_in(16)):
        claims.append(draw(st.sampled_from(claims)))
    return draw(st.permutations(claims))


def serialize(claims: list[tuple[str, Any]], ascii_only: bool, spaced: bool) -> bytes:
    colon, comma = (" : ", " , ") if spaced else (":", ",")
    dump = json.JSONEncoder(ensure_ascii=ascii_only).encode
    members = comma.join(dump(key) + colon + dump(value) for key, value in claims)
    return ("{" + members + "}").encode()


def expected(claims: list[tuple[str, Any]], channel: str) -> int | None:
    """The contract's verdict: the expiry if valid, else ``None``.

    Repeated keys make the payload invalid: two readers of the same token
    must not find different claims in it.
    """
    keys = [key for key, _ in claims]
    if len(keys) != len(set(keys)):
        return None
    found = dict(claims)
    exp = found.get("exp")
    valid = (
        found.get("aud") == "rpushd"
        and type(found.get("aud")) is str
        and found.get("scope") == "subscribe"
        and type(found.get("scope")) is str
        and found.get("channel") == channel
        and type(found.get("channel")) is str
        and type(exp) is int
        and NOW <= exp <= U64_MAX
    )
    return exp if valid else None


@given(
    channel=channels,
    header=st.binary(max_size=40),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
    data=st.data(),
)
def test_signed_claims_are_accepted_exactly_when_valid(
    channel: str, header: bytes, ascii_only: bool, spaced: bool, data: st.DataObject
) -> None:
    claims = data.draw(claim_lists(channel), label="claims")
    payload = serialize(claims, ascii_only, spaced)
    outcome = verdict(signed(header, payload), channel)

    want = expected(claims, channel)
    event("valid" if want is not None else "invalid")
    if want is None:
        assert isinstance(outcome, str), f"accepted: {payload!r}"
    else:
        assert outcome == want, payload


@given(
    payload=st.binary()
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.sampled_from(
        [b"{}", b"[]", b"null", b'{"exp":1e400}', b'{"a":"\\ud800"}', b"\xef\xbb\xbf{}"]
    ),
    channel=channels,
)
def test_signed_payloads_that_are_not_claims_are_refused(
    payload: bytes, channel: str
) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(signed(b"{}", payload), channel, [SECRET], NOW)
