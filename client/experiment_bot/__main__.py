"""``python -m experiment_bot flush``: send what earlier runs left in the local spool.

The key and server come from the same places as for a script (``$EXPERIMENT_BOT_KEY`` /
``$EXPERIMENT_BOT_URL``, ``.env``, the config file), or from ``--key`` / ``--server``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import config
from .errors import ConfigurationError

FLUSH_HELP = """Send the messages earlier runs could not deliver before they exited (kept in
~/.cache/experiment_bot/, one spool per server and key). Each keeps its idempotency key, so
nothing is doubled. What still cannot be sent stays in the spool."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiment_bot",
        description="experiment_bot: report experiment scripts to your Telegram chat.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    flush = commands.add_parser("flush", help="send the messages spooled by earlier runs", description=FLUSH_HELP)
    flush.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    flush.add_argument("--key", help="the API key (default: as for your scripts)")
    flush.add_argument("--server", help="the server URL (default: as for your scripts)")
    return parser


def flush_command(args: argparse.Namespace) -> int:
    from .sender import Sender
    from .spool import Spool, other_spools
    from .transport import Transport

    try:
        settings = config.resolve(args.key, args.server, strict=False)
    except ConfigurationError as exc:
        print(f"experiment_bot: {exc}", file=sys.stderr)
        return 2
    if not settings.api_key:
        print(
            "experiment_bot: no API key ($EXPERIMENT_BOT_KEY, .env, the config file or --key): the spool "
            "is kept per key, so flush needs the key your scripts use.",
            file=sys.stderr,
        )
        return 2
    spool = Spool(settings.server, settings.api_key)
    others = other_spools(spool.root, spool.dir)
    note = (
        f" ({others} other spool(s) in {spool.root} belong to other keys or servers: run flush with those set)"
        if others
        else ""
    )
    transport = Transport(settings.server, settings.api_key)
    sender = Sender(transport, flush_timeout=args.timeout, spool=spool)
    sender.load_spool()
    done = sender.flush(args.timeout)  # the sender reads the rest of a large spool as it goes
    sender.close(0, report=False)  # what is left goes back to the spool (said below)
    counts = sender.counts()
    if not counts["from_spool"]:
        print(
            f"experiment_bot: nothing spooled for key {config.key_prefix(settings.api_key)}… at "
            f"{settings.server}{note}"
        )
        return 0
    print(
        f"experiment_bot: {counts['sent']} of {counts['from_spool']} spooled message(s) sent to "
        f"{settings.server}, {counts['dropped']} dropped (refused by the server), {counts['spooled']} "
        f"still in {spool.display()}{note}"
    )
    if not done:
        print(
            f"experiment_bot: {settings.server} did not take everything within {args.timeout:g} s; "
            "run flush again later.",
            file=sys.stderr,
        )
    return 0 if done and not counts["spooled"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return flush_command(args)


if __name__ == "__main__":
    sys.exit(main())
