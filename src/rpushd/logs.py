"""Log output: concise text lines, or one JSON object a line.

``RPUSHD_LOG_FORMAT=json`` uses python-json-logger, so that log shippers
get ``time``, ``level``, ``logger`` and ``message`` as fields.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from rpushd.config import Config, logging_level

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(config: Config) -> None:
    """Send the daemon's logs to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={
                    "asctime": "time",
                    "levelname": "level",
                    "name": "logger",
                },
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging_level(config))
    # The websockets library logs a traceback at DEBUG for every handshake
    # it refuses; our own line about the refusal is the useful one.
    logging.getLogger("websockets").setLevel(logging.WARNING)
