"""``manage.py runbot``: the whole product in one process (see ``telegram_app.runtime``)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.site import serve_at
from telegram_app.runtime import BotRuntime, RunOptions


class Command(BaseCommand):
    help = (
        "Run the Telegram bot, the outbox sender and the periodic sweeps; by default also serve the web app "
        "(HTTP + worker WebSockets). With no TELEGRAM_BOT_TOKEN it runs against the built-in Telegram sandbox."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Web app address (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)),
                            help="Web app port (default $PORT or 8000).")
        parser.add_argument("--no-web", dest="web", action="store_false",
                            help="Do not serve the web app (the Procfile's bot process).")
        parser.add_argument("--webhook", action="store_true",
                            help="Take updates through PUBLIC_URL/telegram/webhook/ instead of long polling.")
        parser.add_argument("--migrate", dest="migrate", action="store_true", default=None,
                            help="Apply database migrations first (default when DEBUG is on).")
        parser.add_argument("--no-migrate", dest="migrate", action="store_false")
        parser.add_argument("--sandbox-port", type=int, default=8081,
                            help="Port of the Telegram sandbox and its web chat (default 8081).")

    def handle(self, *args: object, **options: Any) -> None:
        migrate = settings.DEBUG if options["migrate"] is None else options["migrate"]
        if options["webhook"] and not settings.TELEGRAM_WEBHOOK_SECRET:
            raise CommandError("--webhook needs TELEGRAM_WEBHOOK_SECRET (and an https PUBLIC_URL).")
        self._check_ports(options)  # before anything starts: one clear line instead of a traceback later
        if migrate:
            call_command("migrate", interactive=False, verbosity=0)
        if options["web"] and "PUBLIC_URL" not in os.environ:
            # Unset means "where this process serves": connect commands and /worker must point here.
            serve_at(f"http://{options['host']}:{options['port']}")
        run = RunOptions(
            host=options["host"],
            port=options["port"],
            web=options["web"],
            webhook=options["webhook"],
            sandbox_port=options["sandbox_port"],
        )
        asyncio.run(self._serve(run))

    def _check_ports(self, options: dict[str, Any]) -> None:
        wanted = []
        if options["web"]:
            wanted.append((options["host"], options["port"], "web app", "--port (or $PORT)"))
        if settings.TELEGRAM_USE_SANDBOX:
            wanted.append(("127.0.0.1", options["sandbox_port"], "Telegram sandbox", "--sandbox-port"))
        for host, port, what, option in wanted:
            problem = port_problem(host, port)
            if problem:
                raise CommandError(f"Cannot serve the {what} on {host}:{port} ({problem}); "
                                   f"stop what uses it or pick another port with {option}.")

    async def _serve(self, options: RunOptions) -> None:
        runtime = BotRuntime(options)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runtime.stop_event.set)
        try:
            await runtime.start()
            self._announce(runtime, options)
            await runtime.stop_event.wait()
            self.stdout.write("Stopping…")
        finally:
            await runtime.stop()
        self.stdout.write("Stopped cleanly.")

    def _announce(self, runtime: BotRuntime, options: RunOptions) -> None:
        if options.web:
            self.stdout.write(f"StatsBot web app:  {runtime.web_url}  (worker script at {runtime.web_url}/worker)")
        if runtime.sandbox is not None:
            self.stdout.write(self.style.SUCCESS(f"Telegram sandbox web chat: {runtime.sandbox.url}/"))
            self.stdout.write("Open it in a browser, pick a name and send /start. Ctrl-C stops everything.")
        else:
            self.stdout.write(f"Bot running against {'the configured Bot API' if settings.TELEGRAM_API_URL else 'Telegram'}.")


def port_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on ("" when it can). Port 0 (any free port) always can.

    The check binds and closes at once, the way the servers bind later (``SO_REUSEADDR``), so a port
    in ``TIME_WAIT`` is not reported busy while one another process listens on is.
    """
    if port == 0:
        return ""
    if not 0 < port < 65536:
        return "not a port number"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"unknown address: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is already in use"
            if exc.errno == errno.EACCES:
                return "permission denied: ports below 1024 need root"
            return exc.strerror or str(exc)
    return ""
