"""Standalone sandbox: ``python -m tg_sandbox [--host H] [--port P] [--token T]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from .server import SandboxServer
from .state import DEFAULT_BOT_USERNAME, DEFAULT_TOKEN


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tg_sandbox", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8081")))
    parser.add_argument("--token", default=os.environ.get("SANDBOX_BOT_TOKEN", DEFAULT_TOKEN))
    parser.add_argument(
        "--bot-username", default=os.environ.get("SANDBOX_BOT_USERNAME", DEFAULT_BOT_USERNAME)
    )
    parser.add_argument("--no-flood-control", action="store_true", help="never answer 429 on its own")
    parser.add_argument(
        "--lenient-html", action="store_true", help='accept a stray "&" in HTML, as Telegram does'
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args()


async def _serve(args: argparse.Namespace) -> None:
    server = SandboxServer(
        args.token,
        bot_username=args.bot_username,
        flood_control=not args.no_flood_control,
        strict_html_ampersand=not args.lenient_html,
    )
    await server.start(args.host, args.port)
    print(f"Telegram sandbox web chat: {server.url}/")  # noqa: T201 - the CLI's output
    print(f"  TELEGRAM_API_URL={server.api_base_url}")  # noqa: T201
    print(f"  TELEGRAM_BOT_TOKEN={server.token}")  # noqa: T201
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    args = _parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
