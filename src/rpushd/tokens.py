"""Subscribe tokens (PROTOCOL.md, "Subscribe tokens").

A token is ``HEADER.PAYLOAD.SIGNATURE``, three unpadded base64url parts. The
signature is HMAC-SHA256 over ``HEADER.PAYLOAD`` exactly as sent; the header
is signed but never read. Decoding is strict: the alphabet, no padding, and
zero unused bits in the last character, so that one token has exactly one
spelling.

Pure functions: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable

import orjson

from rpushd.errors import InvalidToken
from rpushd.payloads import has_duplicate_keys

AUDIENCE = "rpushd"
SCOPE = "subscribe"
U64_MAX = 2**64 - 1
# Every reason verify() refuses a token for, as InvalidToken.reason.
REASONS = (
    "malformed",
    "bad_signature",
    "wrong_audience",
    "wrong_scope",
    "wrong_channel",
    "expired",
)

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")
_HEADER = b'{"alg":"HS256","typ":"JWT"}'


def verify(token: str | bytes, channel: str, secrets: Iterable[bytes], now: int) -> int:
    """Accept ``token`` for ``channel`` at unix time ``now``, or raise.

    ``secrets`` lists every key that may have signed the token (the current
    one first). Returns the token's expiry (``exp``). Raises
    :class:`InvalidToken` with a short reason word.
    """
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    parts = raw.split(b".")
    if len(parts) != 3:
        raise InvalidToken("malformed")

    header, payload, signature = parts
    signed = header + b"." + payload
    mac = _b64decode(signature)
    if not any(hmac.compare_digest(mac, _sign(secret, signed)) for secret in secrets):
        raise InvalidToken("bad_signature")

    _b64decode(header)
    return _check_claims(_b64decode(payload), channel, now)


def mint(channel: str, secret: bytes, expires_at: int) -> str:
    """Sign a subscribe token for ``channel`` valid until ``expires_at``."""
    claims = {"aud": AUDIENCE, "scope": SCOPE, "channel": channel, "exp": expires_at}
    signed = _b64encode(_HEADER) + b"." + _b64encode(orjson.dumps(claims))
    return (signed + b"." + _b64encode(_sign(secret, signed))).decode("ascii")


def _check_claims(payload: bytes, channel: str, now: int) -> int:
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidToken("malformed") from None
    if not isinstance(claims, dict) or has_duplicate_keys(payload):
        raise InvalidToken("malformed")

    if claims.get("aud") != AUDIENCE:
        raise InvalidToken("wrong_audience")
    if claims.get("scope") != SCOPE:
        raise InvalidToken("wrong_scope")
    if claims.get("channel") != channel:
        raise InvalidToken("wrong_channel")

    # bool is a subclass of int in Python; JSON true is not a timestamp.
    exp = claims.get("exp")
    if type(exp) is not int or not 0 <= exp <= U64_MAX:
        raise InvalidToken("malformed")
    if exp < now:
        raise InvalidToken("expired")
    return exp


def _sign(secret: bytes, signed: bytes) -> bytes:
    return hmac.new(secret, signed, hashlib.sha256).digest()


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(part: bytes) -> bytes:
    """Decode unpadded base64url, refusing every non-canonical spelling."""
    if len(part) % 4 == 1 or not _BASE64URL.fullmatch(part):
        raise InvalidToken("malformed")

    try:
        data = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except binascii.Error:
        raise InvalidToken("malformed") from None

    # Non-zero unused low bits decode fine but re-encode differently.
    if _b64encode(data) != part:
        raise InvalidToken("malformed")
    return data
