"""Facts a process learns only once it runs, read instead of ever assigning to ``settings``.

- The public URL: ``settings.PUBLIC_URL``, unless ``manage.py runbot`` serves the web app and
  ``PUBLIC_URL`` is not set, in which case connect commands and ``/worker`` must point where
  that process serves (``serve_at``). Only that process serves there, so it is held in memory.
- The bot's username and where ``/start <payload>`` links open (``t.me/<bot>``, or the
  sandbox's web chat): the bot process learns them at start (getMe, the sandbox it started)
  and the web processes that answer ``POST /api/register`` need them, so they are a database
  row (``BotIdentity``), written by ``publish_bot`` and read by ``start_link``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from core.models import BotIdentity

FALLBACK_BOT_USERNAME = "statsbot_sandbox_bot"


@dataclass
class _Served:
    url: str = ""


_served = _Served()


def serve_at(url: str) -> None:
    """This process serves the web app at ``url`` and no ``PUBLIC_URL`` was configured."""
    _served.url = url.rstrip("/")


def public_url() -> str:
    """The URL workers and clients reach this server at (no trailing slash)."""
    return _served.url or settings.PUBLIC_URL


def publish_bot(*, username: str, deep_link_base: str = "") -> BotIdentity:
    """The bot process, at start: its username (getMe) and where /start links open ("" for t.me)."""
    identity, _ = BotIdentity.objects.update_or_create(
        pk=BotIdentity.SINGLETON,
        defaults={"username": username, "deep_link_base": deep_link_base, "updated_at": timezone.now()},
    )
    return identity


def bot_identity() -> BotIdentity:
    """The published identity, or an empty one before any bot has started."""
    return BotIdentity.objects.filter(pk=BotIdentity.SINGLETON).first() or BotIdentity()


def start_link(payload: str) -> str:
    """A link that opens the chat with ``/start <payload>``: t.me, or the sandbox's web chat."""
    identity = bot_identity()
    if identity.deep_link_base:
        return f"{identity.deep_link_base}?start={payload}"
    username = settings.TELEGRAM_BOT_USERNAME or identity.username or FALLBACK_BOT_USERNAME
    return f"https://t.me/{username}?start={payload}"
