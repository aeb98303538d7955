"""JSON request bodies and message payloads (PROTOCOL.md, "Endpoints").

orjson does the parsing and encoding. It refuses NaN, lone surrogates,
invalid UTF-8 and nesting past 1024 levels, and re-encodes compactly with
non-ASCII kept as UTF-8, which is exactly the frame payload the contract asks
for. It does not report duplicate object keys, so that one check is done
here, cheaply in the common case.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

from rpushd.errors import HTTPError

MAX_PAYLOAD_BYTES = 65535

# orjson refuses nesting past 1024 levels. The standard library's decoder,
# used below for the exact duplicate check, stops at the interpreter's
# recursion limit (1000 by default) instead; below orjson's depth, the
# verdict on a document would depend on which parser saw it. Lifting the
# limit above orjson's depth keeps one rule for every document orjson
# accepts.
ORJSON_MAX_DEPTH = 1024
if sys.getrecursionlimit() < 2 * ORJSON_MAX_DEPTH:
    sys.setrecursionlimit(2 * ORJSON_MAX_DEPTH)


def decode_object(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    """Parse a request body that must be a JSON object holding ``fields``.

    Malformed JSON raises a 400 :class:`HTTPError`; JSON of the wrong shape
    (not an object, a field missing or given twice) raises 422.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPError(400, "malformed json") from None

    if not isinstance(value, dict):
        raise HTTPError(422, "expected a json object")
    for field in fields:
        if field not in value:
            raise HTTPError(422, f"missing field {field}")

    if _may_repeat(body, fields) and has_duplicate_keys(body):
        raise HTTPError(422, "duplicate field")
    return value


def encode_message(message: Any) -> bytes:
    """Re-encode a published message as the compact frame payload."""
    try:
        payload = orjson.dumps(message)
    except orjson.JSONEncodeError:
        # orjson writes at most 255 levels of nesting (it reads 1024).
        raise HTTPError(400, "message nested too deeply") from None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise HTTPError(413, "message exceeds 65535 bytes once encoded")
    return payload


def has_duplicate_keys(document: bytes) -> bool:
    """Whether the top-level object of valid JSON ``document`` repeats a key.

    The standard library's decoder reports every object's key pairs, inner
    objects first, so the last report is the top-level object.
    """
    reports: list[list[tuple[str, Any]]] = []

    def record(pairs: list[tuple[str, Any]]) -> None:
        reports.append(pairs)

    json.loads(document, object_pairs_hook=record)

    keys = [key for key, _ in reports[-1]]
    return len(keys) != len(set(keys))


def _may_repeat(body: bytes, fields: tuple[str, ...]) -> bool:
    # A repeated field shows its quoted name twice, unless it was spelled
    # with escapes; only then is the slower exact check worth running.
    if b"\\u" in body:
        return True
    return any(body.count(b'"%s"' % name.encode()) > 1 for name in fields)
