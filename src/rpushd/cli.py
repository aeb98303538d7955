"""The ``rpushd`` command line.

``rpushd`` alone, or ``rpushd serve``, runs the daemon from the environment.
``rpushd dev`` is the zero-configuration quickstart. The other commands are
tools for the people and scripts around a running daemon. Every failure is
one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import NoReturn

import orjson
import uvloop

from rpushd import __version__, client, config, demo, logs, tokens
from rpushd.channels import is_valid_name
from rpushd.errors import RpushdError
from rpushd.server import Server, raise_file_limit, serve

logger = logging.getLogger("rpushd.cli")

DEV_CHANNEL = "demo"
DEV_TOKEN_TTL_SECS = 24 * 3600
# A command that talks to a running daemon needs that daemon's secret, not
# a new one.
DAEMON_SECRET = "set it to the daemon's value, or pass --env-file with its file"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    command = args.command or "serve"

    try:
        environ = _environment(getattr(args, "env_file", None))
        return int(_COMMANDS[command](args, environ))
    except RpushdError as exc:
        print(f"rpushd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever reads the output stopped (``rpushd stats | head``): not
        # worth a message. Python would fail again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rpushd", description="Realtime push daemon.")
    parser.add_argument("--version", action="version", version=__version__)
    env_help = "read KEY=VALUE settings from PATH (they override the environment)"
    parser.add_argument("--env-file", metavar="PATH", help=env_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS keeps a subcommand from resetting a top-level --env-file.
        sub.add_argument(
            "--env-file", metavar="PATH", default=argparse.SUPPRESS, help=env_help
        )
        return sub

    command("serve", "run the daemon from the environment (the default)")
    dev = command("dev", "run a throwaway daemon with fresh secrets")
    dev.add_argument(
        "--listen",
        default=config.DEFAULT_LISTEN,
        metavar="IP:PORT",
        help=f"address to listen on; IPv6 as [::1]:PORT (default: "
        f"{config.DEFAULT_LISTEN})",
    )

    token = command("token", "print a subscribe token signed with RPUSHD_SECRET")
    token.add_argument("channel", help="the channel the token lets one follow")
    token.add_argument(
        "--ttl",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="how long the token stays valid (default: 3600)",
    )

    publish = command("publish", "publish a JSON message to a channel")
    publish.add_argument("channel", help="the channel to publish to")
    publish.add_argument("message", metavar="JSON", help="the message, as JSON")

    stats = command("stats", "print the daemon's statistics")
    mode = stats.add_mutually_exclusive_group()
    for name in ("json", "xml"):
        mode.add_argument(
            f"--{name}",
            action="store_const",
            const=name,
            dest="mode",
            help=f"print {name.upper()} instead of text",
        )
    stats.add_argument("--verbose", action="store_true", help="list channels")

    command("secret", "print a new random secret")
    return parser


def _environment(env_file: str | None) -> dict[str, str]:
    environ = dict(os.environ)
    if env_file:
        environ.update(config.read_env_file(env_file))
    return environ


# Commands.


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = config.load(environ)
    logs.configure(settings)
    raise_file_limit()

    env_file = getattr(args, "env_file", None)
    reload_environ = None
    if env_file:
        reload_environ = partial(_environment, env_file)
    return uvloop.run(serve(settings, reload_environ=reload_environ))


def _dev(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    settings = config.load(
        {
            **environ,
            "RPUSHD_LISTEN": args.listen,
            "RPUSHD_SECRET": secrets.token_urlsafe(32),
            "RPUSHD_PUBLISH_SECRET": secrets.token_urlsafe(32),
        }
    )
    logs.configure(settings)
    raise_file_limit()
    files = demo.pages()
    return uvloop.run(serve(settings, ready=_print_dev_guide, files=files))


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _require_channel(args.channel)
    expires_at = int(time.time()) + args.ttl
    if args.ttl <= 0 or expires_at > tokens.U64_MAX:
        raise RpushdError("--ttl must be a positive number of seconds, below 2^64")

    secret = config.secret_from(environ, "RPUSHD_SECRET", DAEMON_SECRET)
    print(tokens.mint(args.channel, secret, expires_at))
    return 0


def _publish(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _require_channel(args.channel)
    body = _publish_body(args.channel, args.message)
    reply = _privileged(environ, "POST", "/api/publish", body)
    if reply.status != 204:
        raise RpushdError(f"publish refused: {_describe(reply)}")
    return 0


def _stats(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    query = f"?mode={args.mode or 'text'}" + ("&verbose=1" if args.verbose else "")
    reply = _privileged(environ, "GET", "/api/stats" + query, None)
    if reply.status != 200:
        raise RpushdError(f"stats refused: {_describe(reply)}")
    # Whatever answers on that port, a figure we cannot decode is no reason
    # for a traceback.
    sys.stdout.write(reply.body.decode("utf-8", "replace"))
    if not reply.body.endswith(b"\n"):
        sys.stdout.write("\n")
    return 0


def _secret(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    print(secrets.token_urlsafe(48))
    return 0


_COMMANDS = {
    "serve": _serve,
    "dev": _dev,
    "token": _token,
    "publish": _publish,
    "stats": _stats,
    "secret": _secret,
}


# Helpers.


def _require_channel(name: str) -> None:
    if not is_valid_name(name):
        raise RpushdError(
            f"invalid channel name {name!r}: use 1 to 191 of A-Z a-z 0-9 : - _ ."
        )


def _publish_body(channel: str, text: str) -> bytes:
    """The request body that publishes the JSON ``text`` to ``channel``."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise RpushdError("the message is not valid JSON") from None

    # orjson writes a limited depth of nesting, the same limit the daemon
    # meets when it re-encodes the message alone. Encoding the message
    # inside the request object would spend one level of it on that
    # object, so the message is encoded alone and set into the object.
    try:
        encoded = orjson.dumps(message)
    except orjson.JSONEncodeError:
        raise RpushdError("the message is nested too deeply to publish") from None
    return b'{"channel":%s,"message":%s}' % (orjson.dumps(channel), encoded)


def _privileged(
    environ: Mapping[str, str], method: str, path: str, body: bytes | None
) -> client.Reply:
    host, port = config.parse_listen(
        environ.get("RPUSHD_LISTEN", config.DEFAULT_LISTEN)
    )
    name = "RPUSHD_PUBLISH_SECRET"
    secret = config.secret_from(environ, name, DAEMON_SECRET)
    # A header ends at a line break (RFC 9110, section 5.5), so no client
    # can present such a secret; http.client would raise ValueError.
    if any(byte in secret for byte in b"\r\n\0"):
        raise RpushdError(
            f"{name} holds a line break or NUL, which no HTTP header can carry"
        )
    return client.request(host, port, method, path, secret=secret, body=body)


def _describe(reply: client.Reply) -> str:
    try:
        error = orjson.loads(reply.body).get("error", "")
    except (orjson.JSONDecodeError, AttributeError):
        error = ""
    return f"HTTP {reply.status}" + (f" ({error})" if error else "")


def _own_command() -> str:
    """How to run this same rpushd again, whether or not it is on PATH."""
    program = Path(sys.argv[0])
    if program.name == "rpushd" and program.exists():
        if shutil.which("rpushd") == str(program.resolve()):
            return "rpushd"
        return shlex.quote(str(program.resolve()))
    return shlex.quote(sys.executable) + " -m rpushd"


def _print_dev_guide(server: Server) -> None:
    settings = server.config
    base = f"http://{server.address}"
    token = tokens.mint(
        DEV_CHANNEL, settings.secret, int(time.time()) + DEV_TOKEN_TTL_SECS
    )
    publish_secret = settings.publish_secret.decode()
    subscribe_body = shlex.quote(orjson.dumps({"token": token}).decode())
    message = {"channel": DEV_CHANNEL, "message": {"hello": "world"}}
    publish_body = shlex.quote(orjson.dumps(message).decode())
    auth = shlex.quote(f"Authorization: Bearer {publish_secret}")
    if demo.pages():
        demo_line = f"{base}{demo.PREFIX}?channel={DEV_CHANNEL}&token={token}"
    else:
        demo_line = "(no demo page: clients/js is not beside this installation)"

    print(
        f"""
rpushd dev: a throwaway daemon with fresh secrets on {server.address}
(stop it with Ctrl-C; nothing is kept)

1. Subscribe to channel "{DEV_CHANNEL}" in a second terminal. Each frame is a
   2-byte length then JSON; heartbeats are empty frames:

   curl -sN --output - -X POST -H 'Content-Type: application/json' \\
     -d {subscribe_body} \\
     {base}/api/stream/{DEV_CHANNEL}

2. Publish to it from a third terminal, and watch it arrive:

   curl -s -X POST -H {auth} -H 'Content-Type: application/json' \\
     -d {publish_body} \\
     {base}/api/publish

   or: RPUSHD_LISTEN={server.address} RPUSHD_PUBLISH_SECRET={publish_secret} \\
     {_own_command()} publish {DEV_CHANNEL} '{{"hello":"world"}}'

3. Watch it in a browser, through the JavaScript client (clients/js):

   {demo_line}

4. Statistics:

   curl -s -H {auth} '{base}/api/stats?verbose=1'

RPUSHD_SECRET={settings.secret.decode()}
RPUSHD_PUBLISH_SECRET={publish_secret}
""",
        flush=True,
    )
