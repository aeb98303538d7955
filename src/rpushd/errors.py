"""Exceptions raised by rpushd.

Every exception the daemon raises on purpose derives from one root::

    RpushdError
    ├── ConfigError        a setting is missing or invalid; the daemon stops
    ├── InvalidToken       a subscribe token was refused (carries the reason)
    └── HTTPError          a client sent something we refuse (carries a status)

Messages are lowercase without a final period, and never contain a secret or
a token.
"""


class RpushdError(Exception):
    """Root of every exception rpushd raises on purpose."""


class ConfigError(RpushdError):
    """A configuration value is missing or invalid; the message names it."""


class InvalidToken(RpushdError):
    """A subscribe token was refused; ``reason`` is a short machine word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HTTPError(RpushdError):
    """A request the client got wrong, answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
