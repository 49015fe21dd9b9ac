"""Live ``/dashboard`` messages: opening one, keeping it edited, stopping it when nothing runs.

Every Telegram call goes through the outbox: the dashboard is a ``text`` row with the
dashboard's edit key, and each refresh is another row with the same key, so the sender edits
the one message, paces it within Telegram's limits and coalesces refreshes it could not send
yet (only the newest pending one goes out). On top of that a dashboard is refreshed at most every
``settings.DASHBOARD_REFRESH`` seconds and only when its text changed. Each state change and
the row it causes are written in one transaction.
"""

from __future__ import annotations

import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Account
from core.outbox import dashboard_edit_key, enqueue
from notifications.models import TrackedProcess
from telegram_app.models import Dashboard
from telegram_app.rendering import dashboard as view

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
RECENT = timedelta(hours=1)  # runs that ended this recently are listed under "Recently ended"


def _active(account_ids: Iterable[int]) -> dict[int, list[TrackedProcess]]:
    found: dict[int, list[TrackedProcess]] = defaultdict(list)
    for process in TrackedProcess.objects.active().filter(account_id__in=list(account_ids)).order_by("started_at", "pk"):
        found[process.account_id].append(process)
    return found


def _ended(account_ids: Iterable[int], since: datetime) -> dict[int, list[TrackedProcess]]:
    found: dict[int, list[TrackedProcess]] = defaultdict(list)
    rows = (TrackedProcess.objects.filter(account_id__in=list(account_ids), state__in=TrackedProcess.FINISHED,
                                          ended_at__gte=since).order_by("-ended_at", "-pk"))
    for process in rows:
        if len(found[process.account_id]) < view.MAX_RECENT:
            found[process.account_id].append(process)
    return found


def _idle_window() -> timedelta:
    return timedelta(seconds=settings.DASHBOARD_IDLE_AFTER)


def _locked(account: Account) -> Dashboard:
    """The account's dashboard row, locked (created stopped if it has none yet)."""
    try:
        with transaction.atomic():
            Dashboard.objects.get_or_create(account=account)
    except IntegrityError:  # created concurrently: it is there now
        pass
    return Dashboard.objects.select_for_update().get(account=account)


def open_dashboard(account: Account) -> Dashboard:
    """``/dashboard``: queue a new dashboard message under a new edit key. A dashboard that was
    live is edited once more to say it was replaced, so there is never more than one live."""
    now = timezone.now()
    with transaction.atomic():
        dashboard = _locked(account)
        if dashboard.state == Dashboard.State.LIVE and dashboard.edit_key:
            enqueue(account, text=view.REPLACED, edit_key=dashboard.edit_key)
        active = _active([account.pk])[account.pk]
        text = view.dashboard_text(active, _ended([account.pk], now - RECENT)[account.pk], now)
        edit_key = dashboard_edit_key(account.pk, secrets.token_hex(6))
        enqueue(account, text=text, edit_key=edit_key)
        running = any(p.state == TrackedProcess.State.RUNNING for p in active)
        dashboard.go_live(edit_key=edit_key, text=text, idle_since=None if running else now)
    logger.info("account %s opened a dashboard (%s processes active)", account.pk, len(active))
    return dashboard


def stop_dashboard(account: Account) -> bool:
    """``/dashboard stop``: a final edit, and no more. False when no dashboard was live."""
    with transaction.atomic():
        dashboard = Dashboard.objects.select_for_update().filter(account=account).first()
        if dashboard is None or dashboard.state != Dashboard.State.LIVE:
            return False
        text = view.stopped_text(view.STOPPED_BY_USER)
        enqueue(account, text=text, edit_key=dashboard.edit_key)
        dashboard.stop(text)
    return True


def refresh_dashboards(now: datetime | None = None) -> int:
    """The sweep: render each live dashboard not looked at for ``DASHBOARD_REFRESH`` seconds and
    queue an edit when its text changed; stop those where nothing has run for
    ``DASHBOARD_IDLE_AFTER`` (or whose chat blocked the bot). Returns how many rows were queued.

    Rendering needs no lock: only a dashboard that changes is locked (skipping one another
    process holds) and re-checked, so several processes may sweep at once; the unchanged ones
    are marked checked in one query.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.DASHBOARD_REFRESH)
    due = list(Dashboard.objects.filter(state=Dashboard.State.LIVE, checked_at__lte=cutoff)
               .select_related("account").order_by("checked_at")[:SWEEP_BATCH])
    if not due:
        return 0
    account_ids = [dashboard.account_id for dashboard in due]
    active = _active(account_ids)
    ended = _ended(account_ids, now - RECENT)
    queued = 0
    unchanged: list[int] = []
    for dashboard in due:
        change = _change(dashboard, active[dashboard.account_id], ended[dashboard.account_id], now)
        if change is None:
            unchanged.append(dashboard.pk)
            continue
        with transaction.atomic():
            locked = (Dashboard.objects.select_for_update(skip_locked=True)
                      .filter(pk=dashboard.pk, state=Dashboard.State.LIVE, checked_at__lte=cutoff).first())
            if locked is not None:
                locked.account = dashboard.account
                queued += _apply(locked, change, now)
    Dashboard.objects.filter(pk__in=unchanged, state=Dashboard.State.LIVE).update(checked_at=now)
    return queued


@dataclass(frozen=True)
class Change:
    action: str  # "stop" (silently when ``text`` is empty) | "edit" (when ``text`` is not empty) | "idle"
    text: str
    idle_since: datetime | None


def _change(dashboard: Dashboard, active: list[TrackedProcess], ended: list[TrackedProcess],
            now: datetime) -> Change | None:
    """What this dashboard needs now; None when nothing (it is only marked checked)."""
    if dashboard.account.blocked_at is not None:  # nothing can reach the chat: stop without a word
        return Change("stop", "", None)
    running = any(p.state == TrackedProcess.State.RUNNING for p in active)
    idle_since = None if running else (dashboard.idle_since or now)
    if idle_since is not None and now - idle_since >= _idle_window():
        return Change("stop", view.stopped_text(view.idle_reason()), idle_since)
    text = view.dashboard_text(active, ended, now)
    if text != dashboard.text:
        return Change("edit", text, idle_since)
    if idle_since != dashboard.idle_since:
        return Change("idle", text, idle_since)
    return None


def _apply(dashboard: Dashboard, change: Change, now: datetime) -> int:
    """Carry out ``change`` on the locked ``dashboard``, with the outbox row it causes; rows queued."""
    account = dashboard.account
    if change.action == "stop":
        if change.text:
            enqueue(account, text=change.text, edit_key=dashboard.edit_key)
            logger.info("dashboard of account %s stopped: idle since %s", account.pk, change.idle_since)
        dashboard.stop(change.text or dashboard.text)
        return 1 if change.text else 0
    fields: dict[str, object] = {"checked_at": now, "idle_since": change.idle_since}
    if change.action == "edit":
        enqueue(account, text=change.text, edit_key=dashboard.edit_key)
        fields.update(text=change.text, edited_at=now)
    Dashboard.objects.filter(pk=dashboard.pk).update(**fields)
    return 1 if change.action == "edit" else 0
