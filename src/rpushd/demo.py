"""The demo page that ``rpushd dev`` serves, from the browser client's folder.

Only the quickstart serves files: in production the web server does, and
the daemon keeps to its API. The page and the module are read from
``clients/js`` of the checkout this package runs from (``scripts/dev``
installs it in place); a daemon installed elsewhere has no demo page, and
says so.
"""

from __future__ import annotations

from pathlib import Path

from rpushd.http11 import NO_CACHE_HEADERS, Response

PREFIX = "/demo/"
_CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"
_FILES = {
    "": ("demo.html", "text/html; charset=utf-8"),
    "rpushd.js": ("rpushd.js", "text/javascript; charset=utf-8"),
}


def pages(client_dir: Path = _CLIENT_DIR) -> dict[str, Response]:
    """Responses by path for the demo page and its module; empty if absent."""
    found = {}
    for name, (filename, content_type) in _FILES.items():
        try:
            body = (client_dir / filename).read_bytes()
        except OSError:
            return {}
        found[PREFIX + name] = Response(200, body, content_type, list(NO_CACHE_HEADERS))

    # The page loads its module by a relative URL, which only resolves
    # from the folder: send a typed "/demo" there.
    found[PREFIX.rstrip("/")] = Response(301, headers=[("Location", PREFIX)])
    return found
