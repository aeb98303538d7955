"""Subscribe tokens: the shared vectors, then the edges they do not cover."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rpushd import tokens
from rpushd.errors import InvalidToken

# In CI the checkout sits next to shared/, so this is X/../shared.
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "tokens.json"

SECRET = b"unit-test-secret"
NOW = 1_800_000_000
CHANNEL = "thread-posts:459"


def _load_vectors() -> dict[str, Any] | None:
    try:
        return dict(json.loads(VECTORS.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


VECTOR_DOC = _load_vectors()

# A missing file must fail the run, so it becomes one case that fails.
VECTOR_CASES = (
    [pytest.param(case, id=case["name"]) for case in VECTOR_DOC["cases"]]
    if VECTOR_DOC is not None
    else [pytest.param(None, id="vectors file missing")]
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(payload: bytes, secret: bytes = SECRET) -> str:
    """A token over raw payload bytes, signed independently of rpushd."""
    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload)
    mac = hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()
    return signed + "." + b64(mac)


def claims(**overrides: Any) -> bytes:
    values = {"aud": "rpushd", "scope": "subscribe", "channel": CHANNEL}
    values["exp"] = NOW + 60
    values.update(overrides)
    return json.dumps(values).encode()


# The shared vectors.


@pytest.mark.parametrize("case", VECTOR_CASES)
def test_vector_verdict_matches_the_reference(case: dict[str, Any] | None) -> None:
    if case is None or VECTOR_DOC is None:
        pytest.fail(f"the shared token vectors are missing: {VECTORS}")

    secrets = [VECTOR_DOC["secret"].encode()]
    now = VECTOR_DOC["now"]
    if case["valid"]:
        tokens.verify(case["token"], case["path_channel"], secrets, now)
    else:
        with pytest.raises(InvalidToken):
            tokens.verify(case["token"], case["path_channel"], secrets, now)


def test_vectors_file_holds_valid_and_invalid_cases() -> None:
    assert VECTOR_DOC is not None, f"missing {VECTORS}"
    verdicts = {case["valid"] for case in VECTOR_DOC["cases"]}
    assert verdicts == {True, False}


# Minting.


def test_minted_token_is_accepted_until_and_including_its_expiry() -> None:
    token = tokens.mint(CHANNEL, SECRET, NOW)
    tokens.verify(token, CHANNEL, [SECRET], NOW - 3600)
    tokens.verify(token, CHANNEL, [SECRET], NOW)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token, CHANNEL, [SECRET], NOW + 1)


def test_minted_token_is_refused_for_another_channel_or_secret() -> None:
    token = tokens.mint(CHANNEL, SECRET, NOW + 60)
    with pytest.raises(InvalidToken):
        tokens.verify(token, "thread-posts:460", [SECRET], NOW)
    with pytest.raises(InvalidToken):
        tokens.verify(token, CHANNEL, [b"another-secret"], NOW)


def test_minted_token_uses_the_reference_header_and_unpadded_parts() -> None:
    token = tokens.mint(CHANNEL, SECRET, NOW + 60)
    header, payload, signature = token.split(".")
    assert header == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    assert "=" not in token
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert decoded == {
        "aud": "rpushd",
        "scope": "subscribe",
        "channel": CHANNEL,
        "exp": NOW + 60,
    }
    assert len(signature) == 43


def test_token_given_as_bytes_is_accepted_like_text() -> None:
    token = tokens.mint(CHANNEL, SECRET, NOW + 60)
    tokens.verify(token.encode("ascii"), CHANNEL, [SECRET], NOW)


# Claims.


def test_exp_true_is_refused_although_bool_is_an_int_in_python() -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(sign(claims(exp=True)), CHANNEL, [SECRET], 0)


def test_exp_at_u64_max_is_accepted_while_in_the_future() -> None:
    tokens.verify(sign(claims(exp=2**64 - 1)), CHANNEL, [SECRET], NOW)


def test_exp_past_u64_max_is_refused() -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(sign(claims(exp=2**64)), CHANNEL, [SECRET], NOW)


def test_exp_of_zero_is_a_valid_unsigned_integer_long_expired() -> None:
    tokens.verify(sign(claims(exp=0)), CHANNEL, [SECRET], 0)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(sign(claims(exp=0)), CHANNEL, [SECRET], NOW)


def test_duplicate_claim_keys_are_refused() -> None:
    payload = (
        b'{"aud":"rpushd","scope":"subscribe","channel":"other",'
        b'"exp":%d,"channel":"%s"}' % (NOW + 60, CHANNEL.encode())
    )
    with pytest.raises(InvalidToken):
        tokens.verify(sign(payload), CHANNEL, [SECRET], NOW)


def test_duplicate_claim_key_spelled_with_an_escape_is_refused() -> None:
    payload = (
        b'{"aud":"rpushd","scope":"subscribe","channel":"other",'
        b'"exp":%d,"\\u0063hannel":"%s"}' % (NOW + 60, CHANNEL.encode())
    )
    with pytest.raises(InvalidToken):
        tokens.verify(sign(payload), CHANNEL, [SECRET], NOW)


def test_payload_nested_5000_levels_deep_is_refused_without_crashing() -> None:
    deep = "[" * 5000 + "]" * 5000
    payload = claims()[:-1] + b', "x": ' + deep.encode() + b"}"
    with pytest.raises(InvalidToken):
        tokens.verify(sign(payload), CHANNEL, [SECRET], NOW)


@pytest.mark.parametrize("depth", [100, 500, 990, 1023, 1025])
def test_deeply_nested_extra_claim_never_raises_anything_but_invalid_token(
    depth: int,
) -> None:
    # Whether such a token passes is a matter of parser limits; raising
    # anything other than InvalidToken from verify() is a bug either way.
    deep = "[" * depth + "]" * depth
    payload = claims()[:-1] + b', "x": ' + deep.encode() + b"}"
    with contextlib.suppress(InvalidToken):
        tokens.verify(sign(payload), CHANNEL, [SECRET], NOW)


# Spelling.


@pytest.mark.parametrize(
    "token",
    [
        "é.é.é",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\uff45\uff59\uff2a.abc",
        "\u0430bc.def.ghi",
        "a.b.c\u200b",
    ],
    ids=["latin", "fullwidth", "cyrillic", "zero-width space"],
)
def test_non_ascii_token_text_is_refused_cleanly(token: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(token, CHANNEL, [SECRET], NOW)


def test_non_ascii_character_in_a_signed_token_is_refused() -> None:
    header, payload, signature = tokens.mint(CHANNEL, SECRET, NOW + 60).split(".")
    with pytest.raises(InvalidToken):
        tokens.verify(f"{header}.{payload}.{signature}é", CHANNEL, [SECRET], NOW)
    with pytest.raises(InvalidToken):
        tokens.verify(f"{header}é.{payload}.{signature}", CHANNEL, [SECRET], NOW)


def test_non_ascii_bytes_are_refused_cleanly() -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(b"\xff\xfe.\x80.\xc3\xa9", CHANNEL, [SECRET], NOW)


# Secrets.


def test_token_signed_with_the_second_of_several_secrets_is_accepted() -> None:
    token = tokens.mint(CHANNEL, b"previous-secret", NOW + 60)
    tokens.verify(token, CHANNEL, [SECRET, b"previous-secret"], NOW)


def test_token_signed_with_none_of_the_secrets_is_refused() -> None:
    token = tokens.mint(CHANNEL, b"unknown-secret", NOW + 60)
    with pytest.raises(InvalidToken, match="bad_signature"):
        tokens.verify(token, CHANNEL, [SECRET, b"previous-secret"], NOW)


def test_no_secrets_at_all_accepts_nothing() -> None:
    token = tokens.mint(CHANNEL, SECRET, NOW + 60)
    with pytest.raises(InvalidToken):
        tokens.verify(token, CHANNEL, [], NOW)


# Reasons.


def test_every_reason_a_token_is_refused_for_is_listed() -> None:
    # The metrics show a zero for each listed reason before any refusal.
    raised = re.findall(r'InvalidToken\("(\w+)"\)', inspect.getsource(tokens))
    assert set(raised) == set(tokens.REASONS)
