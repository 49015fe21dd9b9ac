"""``manage.py connecttoken <telegram_user_id> [--create]``: a connect command for an account."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Account
from workers.services import issue_connect_command


class Command(BaseCommand):
    help = "Print a one-time worker connect command (valid 5 minutes) for a Telegram account."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("telegram_user_id", type=int)
        parser.add_argument(
            "--create",
            action="store_true",
            help="Create the account first if it does not exist (its chat id is taken to be the user id).",
        )

    def handle(self, *args: object, telegram_user_id: int, create: bool, **options: object) -> None:
        account = Account.objects.filter(telegram_user_id=telegram_user_id).first()
        if account is None:
            if not create:
                raise CommandError(
                    f"No account for Telegram user {telegram_user_id}. The user must /start the bot first, "
                    "or pass --create."
                )
            account, _ = Account.from_telegram(user_id=telegram_user_id, chat_id=telegram_user_id)
            self.stdout.write(f"Created account for Telegram user {telegram_user_id}.")
        command = issue_connect_command(account)
        self.stdout.write(f"Connect command for {account} (single use, expires {command.expires_at:%H:%M:%S} UTC):")
        self.stdout.write("")
        self.stdout.write(f"  macOS / Linux:  {command.unix}")
        self.stdout.write(f"  Windows:        {command.windows}")
