"""A small HTTP client for the command line's publish and stats commands."""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from rpushd.config import loopback_if_wildcard
from rpushd.errors import RpushdError

TIMEOUT_SECS = 10.0


class Unreachable(RpushdError):
    """The daemon could not be reached at all."""


@dataclass(frozen=True)
class Reply:
    """Status and body of one answer."""

    status: int
    body: bytes


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    *,
    secret: bytes,
    body: bytes | None = None,
) -> Reply:
    """Send one privileged request to the daemon and read the answer."""
    # The secret goes out as its exact bytes, as curl would send it;
    # http.client would otherwise encode a str as Latin-1.
    headers: dict[str, str | bytes] = {"Authorization": b"Bearer " + secret}
    if body is not None:
        headers["Content-Type"] = "application/json"

    connection = http.client.HTTPConnection(
        loopback_if_wildcard(host), port, timeout=TIMEOUT_SECS
    )
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, response.read())
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise Unreachable(f"cannot reach rpushd at {host}:{port}: {reason}") from None
    finally:
        connection.close()
