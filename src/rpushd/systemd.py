"""Telling systemd how the daemon is doing (sd_notify(3)).

With ``Type=notify`` systemd passes a datagram socket in ``NOTIFY_SOCKET``
and waits for ``READY=1``; ``STOPPING=1`` announces a shutdown, and when the
unit sets ``WatchdogSec=`` the daemon must send ``WATCHDOG=1`` more often
than ``WATCHDOG_USEC``. The protocol is one datagram per message, so it is
written here rather than pulled in: the maintained bindings need
libsystemd's headers and a compiler, which we do not ask of installers.
Without ``NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger("rpushd.systemd")


class Notifier:
    """Sends state changes to systemd's notification socket, if any."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(environ)

    def notify(self, *states: str) -> None:
        """Send ``KEY=VALUE`` states, one datagram, ignoring failures."""
        if self._address is None:
            return
        message = "\n".join(states).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            logger.warning("cannot notify systemd: %s", exc)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # An abstract socket: the name starts with a NUL byte.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout, when systemd asks us for keep-alives."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
