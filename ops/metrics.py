"""The PRD's success metrics (seed 000, §8), measured from the rows the product keeps.

One function, ``report``, feeds the admin page (``ops.views.metrics_page``) and
``manage.py statsreport``. Each metric is computed for a trailing window (24 hours, 7 days):

- **Worker connection success rate** (> 95 %): of the connect tokens issued in the window whose
  fate is decided, the share that became a ready worker (``ops.models.Enrollment``). A token
  decided otherwise was used without a worker ever getting ready, or expired unused. Tokens
  still usable, and tokens the user replaced with a newer ``/connect`` before using them, are
  not attempts.
- **Time from /connect to worker ready** (< 30 s): token issued → the enrolled worker's first
  authenticated connection, for tokens issued in the window; the median is judged, the 90th
  percentile shown.
- **Job success rate** (> 90 %): of the jobs that finished in the window, succeeded ÷
  (succeeded + failed + lost). Cancelled jobs were the user's choice and are not counted.
- **Active users with a worker** (> 30 %): of the accounts active in the window (they used the
  bot, ``Account.last_active_at``, or their notification key, ``ApiKey.last_used_at``), the
  share with a live worker that has connected at least once.

Also shown: the jobs finished in the window by action (succeeded, failed, lost, cancelled), and
the top job error codes (failed and lost jobs finished in the window, by ``error_code``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import Account
from jobs.models import Job
from ops.models import Enrollment
from workers.models import ConnectToken, Worker

WINDOWS: tuple[tuple[str, timedelta], ...] = (("last 24 h", timedelta(hours=24)), ("last 7 days", timedelta(days=7)))
TOP_ERROR_CODES = 10


@dataclass(frozen=True)
class Target:
    text: str  # as the PRD writes it
    check: Callable[[float], bool]


TARGETS = {
    "connect_success": Target("> 95 %", lambda v: v > 0.95),
    "time_to_ready": Target("< 30 s", lambda v: v < 30),
    "job_success": Target("> 90 %", lambda v: v > 0.90),
    "adoption": Target("> 30 %", lambda v: v > 0.30),
}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None  # None: nothing to measure in this window
    unit: str  # "%" (value is a fraction) or "s"
    detail: str

    @property
    def target(self) -> str:
        return TARGETS[self.key].text

    @property
    def met(self) -> bool | None:
        return None if self.value is None else TARGETS[self.key].check(self.value)

    @property
    def shown(self) -> str:
        if self.value is None:
            return "no data"
        return f"{self.value * 100:.1f} %" if self.unit == "%" else f"{self.value:.1f} s"

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "—"}[self.met]


@dataclass(frozen=True)
class ActionOutcomes:
    """The jobs of one action that finished in a window."""

    action: str
    succeeded: int
    failed: int
    lost: int
    cancelled: int

    @property
    def success_rate(self) -> float | None:
        counted = self.succeeded + self.failed + self.lost
        return self.succeeded / counted if counted else None

    @property
    def shown_rate(self) -> str:
        rate = self.success_rate
        return "—" if rate is None else f"{rate * 100:.1f} %"


@dataclass(frozen=True)
class WindowReport:
    label: str
    since: datetime
    figures: list[Figure]
    error_codes: list[tuple[str, int]]
    connect_outcomes: dict[str, int] = field(default_factory=dict)
    jobs_by_action: list[ActionOutcomes] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    windows: list[WindowReport]


# Connect tokens -------------------------------------------------------------------------

READY, USED_NOT_READY, EXPIRED, SUPERSEDED, PENDING = "ready", "used_not_ready", "expired", "superseded", "pending"


def token_outcomes(tokens: Iterable[ConnectToken], now: datetime) -> dict[int, str]:
    """What became of each token (``tokens`` with ``enrollment`` known; all of an account's tokens)."""
    by_account: dict[int, list[ConnectToken]] = defaultdict(list)
    for token in tokens:
        by_account[token.account_id].append(token)
    outcomes: dict[int, str] = {}
    for account_tokens in by_account.values():
        account_tokens.sort(key=lambda t: t.created_at)
        for index, token in enumerate(account_tokens):
            if hasattr(token, "enrollment"):
                outcomes[token.pk] = READY
            elif token.used_at is not None:
                outcomes[token.pk] = USED_NOT_READY
            elif any(newer.created_at < token.expires_at for newer in account_tokens[index + 1:]):
                outcomes[token.pk] = SUPERSEDED
            elif token.expires_at > now:
                outcomes[token.pk] = PENDING
            else:
                outcomes[token.pk] = EXPIRED
    return outcomes


def connect_outcomes(since: datetime, now: datetime) -> dict[str, int]:
    tokens = ConnectToken.objects.filter(created_at__gte=since, created_at__lte=now).select_related("enrollment")
    counts = {READY: 0, USED_NOT_READY: 0, EXPIRED: 0, SUPERSEDED: 0, PENDING: 0}
    for outcome in token_outcomes(tokens, now).values():
        counts[outcome] += 1
    return counts


def _connect_success(counts: dict[str, int]) -> Figure:
    attempts = counts[READY] + counts[USED_NOT_READY] + counts[EXPIRED]
    return Figure(
        "connect_success", "Worker connection success rate",
        counts[READY] / attempts if attempts else None, "%",
        f"{counts[READY]} of {attempts} connect attempts ready "
        f"({counts[USED_NOT_READY]} used but never ready, {counts[EXPIRED]} expired unused; "
        f"not counted: {counts[SUPERSEDED]} replaced by a newer /connect, {counts[PENDING]} still usable)",
    )


def _time_to_ready(since: datetime, now: datetime) -> Figure:
    seconds = sorted(
        (ready - issued).total_seconds()
        for issued, ready in Enrollment.objects.filter(token_issued_at__gte=since, token_issued_at__lte=now)
        .values_list("token_issued_at", "first_ready_at")
        if issued is not None
    )
    if not seconds:
        return Figure("time_to_ready", "Time from /connect to worker ready (median)", None, "s", "no worker connected")
    p90 = seconds[min(len(seconds) - 1, int(0.9 * len(seconds)))]
    return Figure(
        "time_to_ready", "Time from /connect to worker ready (median)", statistics.median(seconds), "s",
        f"{len(seconds)} workers; 90th percentile {p90:.1f} s; slowest {seconds[-1]:.1f} s",
    )


# Jobs ------------------------------------------------------------------------------------

COUNTED_OUTCOMES = (Job.State.SUCCEEDED, Job.State.FAILED, Job.State.LOST)


def _finished_jobs(since: datetime, now: datetime) -> Q:
    return Q(finished_at__gte=since, finished_at__lte=now, state__in=COUNTED_OUTCOMES)


def _job_success(since: datetime, now: datetime) -> Figure:
    counts = dict(
        Job.objects.filter(_finished_jobs(since, now)).values_list("state").annotate(n=Count("pk")).order_by()
    )
    total = sum(counts.values())
    succeeded = counts.get(Job.State.SUCCEEDED, 0)
    return Figure(
        "job_success", "Job success rate", succeeded / total if total else None, "%",
        f"{succeeded} of {total} finished jobs succeeded ({counts.get(Job.State.FAILED, 0)} failed, "
        f"{counts.get(Job.State.LOST, 0)} lost; cancelled ones not counted)",
    )


def jobs_by_action(since: datetime, now: datetime) -> list[ActionOutcomes]:
    rows = (
        Job.objects.filter(finished_at__gte=since, finished_at__lte=now, state__in=Job.FINISHED)
        .values_list("action", "state").annotate(n=Count("pk")).order_by()
    )
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for action, state, n in rows:
        counts[action][state] = n
    return [
        ActionOutcomes(action, c.get(Job.State.SUCCEEDED, 0), c.get(Job.State.FAILED, 0), c.get(Job.State.LOST, 0),
                       c.get(Job.State.CANCELLED, 0))
        for action, c in sorted(counts.items())
    ]


def top_error_codes(since: datetime, now: datetime, limit: int = TOP_ERROR_CODES) -> list[tuple[str, int]]:
    rows = (
        Job.objects.filter(_finished_jobs(since, now)).exclude(state=Job.State.SUCCEEDED)
        .values_list("error_code").annotate(n=Count("pk")).order_by("-n", "error_code")[:limit]
    )
    return [(code or "(none)", n) for code, n in rows]


# Accounts --------------------------------------------------------------------------------


def active_accounts(since: datetime) -> Q:
    return Q(last_active_at__gte=since) | Q(api_keys__last_used_at__gte=since)


def _adoption(since: datetime) -> Figure:
    active_ids = set(Account.objects.filter(active_accounts(since)).values_list("pk", flat=True))
    with_worker = set(
        Worker.objects.live().filter(account_id__in=active_ids, connected_at__isnull=False)
        .values_list("account_id", flat=True)
    )
    return Figure(
        "adoption", "Active users with a worker", len(with_worker) / len(active_ids) if active_ids else None, "%",
        f"{len(with_worker)} of {len(active_ids)} active users have a connected worker",
    )


# The report ------------------------------------------------------------------------------


def window_report(label: str, since: datetime, now: datetime) -> WindowReport:
    outcomes = connect_outcomes(since, now)
    return WindowReport(
        label=label,
        since=since,
        figures=[
            _connect_success(outcomes),
            _time_to_ready(since, now),
            _job_success(since, now),
            _adoption(since),
        ],
        error_codes=top_error_codes(since, now),
        connect_outcomes=outcomes,
        jobs_by_action=jobs_by_action(since, now),
    )


def report(now: datetime | None = None) -> Report:
    now = now or timezone.now()
    return Report(generated_at=now, windows=[window_report(label, now - span, now) for label, span in WINDOWS])


def render_text(data: Report) -> str:
    lines = [f"StatsBot success metrics at {data.generated_at:%Y-%m-%d %H:%M:%S %Z}", ""]
    for window in data.windows:
        lines.append(f"== {window.label} (since {window.since:%Y-%m-%d %H:%M})")
        width = max(len(f.label) for f in window.figures)
        for figure in window.figures:
            lines.append(f"  {figure.label:<{width}}  {figure.shown:>9}  target {figure.target:<7} "
                         f"{figure.verdict}")
            lines.append(f"  {'':<{width}}  {figure.detail}")
        lines.append("  Jobs by action:" + ("" if window.jobs_by_action else " none finished"))
        for row in window.jobs_by_action:
            lines.append(f"    {row.action:<13} {row.shown_rate:>8} succeeded  ({row.succeeded} succeeded, "
                         f"{row.failed} failed, {row.lost} lost, {row.cancelled} cancelled)")
        lines.append("  Top job error codes:" + ("" if window.error_codes else " none"))
        for code, count in window.error_codes:
            lines.append(f"    {count:>6}  {code}")
        lines.append("")
    return "\n".join(lines)
