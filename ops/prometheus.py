"""Prometheus metrics, read from the database at scrape time (``/metrics``, see ``ops.views``).

A custom collector turns aggregates of the rows every process shares (workers, connect tokens,
jobs, outbox messages, tracked processes) into metrics on each scrape, so any web process gives
the same answer and no multiprocess mode is needed. What no row records is counted in the
memory of the process that saw it (``ops.counters``: notify API responses by status, refused
worker auths, Telegram 429s) and labelled ``process="host:pid"``; sum them over ``process``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Count, FloatField, Func, Min, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from core.models import OutboxMessage
from jobs.models import Job
from notifications.models import TrackedProcess
from ops import counters
from ops.models import Enrollment
from workers.models import ConnectToken, Worker

JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
FINISHED_JOB_STATES = (Job.State.SUCCEEDED, Job.State.FAILED, Job.State.CANCELLED, Job.State.LOST)


def _workers() -> Iterator[Metric]:
    live = Worker.objects.live()
    connected = GaugeMetricFamily("statsbot_workers_connected", "Workers with an open WebSocket now.")
    connected.add_metric([], live.exclude(channel_name="").count())
    yield connected
    enrolled = GaugeMetricFamily("statsbot_workers_enrolled", "Live (not revoked) workers, online or not.")
    enrolled.add_metric([], live.count())
    yield enrolled


def _connects() -> Iterator[Metric]:
    now = timezone.now()
    tokens = ConnectToken.objects.aggregate(
        issued=Count("pk"),
        used=Count("pk", filter=Q(used_at__isnull=False)),
        expired=Count("pk", filter=Q(used_at__isnull=True, expires_at__lte=now)),
    )
    ready = Enrollment.objects.filter(token__isnull=False).count()
    issued = CounterMetricFamily("statsbot_connect_tokens_issued", "Connect tokens issued (/connect).")
    issued.add_metric([], tokens["issued"])
    yield issued
    attempts = CounterMetricFamily(
        "statsbot_connect_attempts", "Connect tokens by what became of them: a ready worker, used without "
        "a worker getting ready, or expired unused.", labels=["result"])
    attempts.add_metric(["ready"], ready)
    attempts.add_metric(["used_not_ready"], max(0, tokens["used"] - ready))
    attempts.add_metric(["expired_unused"], tokens["expired"])
    yield attempts
    refused = CounterMetricFamily(
        "statsbot_worker_auth_refused", "Worker WebSocket auths refused, by reason (counted by this process).",
        labels=["reason", "process"])
    process = counters.process_label()
    for (reason,), count in sorted(counters.snapshot("auth_refused").items()):
        refused.add_metric([reason, process], count)
    yield refused


class SecondsBetween(Func):
    """``end - start`` in seconds, computed by the database in C (Django's SQLite duration is a
    Python function called per row: 20k jobs took seconds to scrape)."""

    arity = 2
    output_field = FloatField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        start, end = self.source_expressions
        return Func(end, start, template="((julianday(%(expressions)s)) * 86400.0)",
                    arg_joiner=") - julianday(", output_field=FloatField()).as_sql(compiler, connection, **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        start, end = self.source_expressions
        return Func(end, start, template="EXTRACT(EPOCH FROM (%(expressions)s))", arg_joiner=" - ",
                    output_field=FloatField()).as_sql(compiler, connection, **extra)


def _jobs() -> Iterator[Metric]:
    by_state = Job.objects.values_list("action", "state").annotate(n=Count("pk")).order_by()
    unfinished = GaugeMetricFamily("statsbot_jobs_unfinished", "Jobs queued, dispatched or running.",
                                   labels=["action", "state"])
    finished = CounterMetricFamily("statsbot_jobs_finished", "Finished jobs by action and outcome.",
                                   labels=["action", "outcome"])
    for action, state, n in by_state:
        (finished if state in FINISHED_JOB_STATES else unfinished).add_metric([action, state], n)
    yield unfinished
    yield finished

    buckets = {f"le_{i}": Count("pk", filter=Q(duration__lte=edge)) for i, edge in enumerate(JOB_DURATION_BUCKETS)}
    rows = (
        Job.objects.filter(state__in=FINISHED_JOB_STATES, finished_at__isnull=False)
        .annotate(duration=SecondsBetween("created_at", "finished_at"))
        .values("action", "state")
        .annotate(n=Count("pk"), total=Sum("duration"), **buckets)
        .order_by()
    )
    histogram = HistogramMetricFamily(
        "statsbot_job_duration_seconds", "Time from a job's submission to its outcome.", labels=["action", "outcome"])
    for found in rows:
        row: dict[str, Any] = dict(found)
        edges = [(floatToGoString(edge), row[f"le_{i}"]) for i, edge in enumerate(JOB_DURATION_BUCKETS)]
        total = row["total"]
        histogram.add_metric(
            [row["action"], row["state"]], [*edges, ("+Inf", row["n"])],
            sum_value=float(total or 0),
        )
    yield histogram


def _outbox() -> Iterator[Metric]:
    now = timezone.now()
    State = OutboxMessage.State
    depth = GaugeMetricFamily("statsbot_outbox_messages", "Outbox messages waiting or being sent.", labels=["state"])
    counts = dict(OutboxMessage.objects.filter(state__in=[State.PENDING, State.SENDING])
                  .values_list("state").annotate(n=Count("pk")).order_by())
    for state in (State.PENDING, State.SENDING):
        depth.add_metric([state], counts.get(state, 0))
    yield depth
    pending = OutboxMessage.objects.filter(state=State.PENDING, account__blocked_at__isnull=True)
    ages = pending.aggregate(created=Min("created_at"), due=Min("next_attempt_at", filter=Q(next_attempt_at__lte=now)))
    oldest = GaugeMetricFamily("statsbot_outbox_oldest_pending_age_seconds",
                               "Age of the oldest pending outbox message (0 when none).")
    oldest.add_metric([], (now - ages["created"]).total_seconds() if ages["created"] else 0.0)
    yield oldest
    waiting = GaugeMetricFamily("statsbot_outbox_oldest_deliverable_wait_seconds",
                                "How long the longest-waiting deliverable message has been due (what /readyz judges).")
    waiting.add_metric([], (now - ages["due"]).total_seconds() if ages["due"] else 0.0)
    yield waiting
    rate_limited = GaugeMetricFamily("statsbot_outbox_waiting_on_429",
                                     "Pending messages whose last attempt Telegram answered with 429.")
    rate_limited.add_metric([], OutboxMessage.objects.filter(state=State.PENDING, error__startswith="429").count())
    yield rate_limited

    outcomes = (
        OutboxMessage.objects.filter(state__in=[State.SENT, State.FAILED])
        .values_list("kind", "state").annotate(n=Count("pk")).order_by()
    )
    sent = CounterMetricFamily("statsbot_outbox_sent", "Outbox messages delivered, by kind.", labels=["kind"])
    failed = CounterMetricFamily("statsbot_outbox_failed", "Outbox messages given up on, by kind.", labels=["kind"])
    for kind, state, n in outcomes:
        (sent if state == State.SENT else failed).add_metric([kind], n)
    yield sent
    yield failed
    tries = OutboxMessage.objects.filter(attempts__gt=1).aggregate(attempts=Sum("attempts"), rows=Count("pk"))
    retried = CounterMetricFamily(
        "statsbot_outbox_retries", "Attempts past the first after network errors or 5xx (a 429 uses up no attempt).")
    retried.add_metric([], (tries["attempts"] or 0) - (tries["rows"] or 0))
    yield retried
    throttled = CounterMetricFamily("statsbot_telegram_429",
                                    "429 Too Many Requests answers to the outbox sender (counted by this process).",
                                    labels=["process"])
    for _labels, count in counters.snapshot("telegram_429").items():
        throttled.add_metric([counters.process_label()], count)
    yield throttled


def _notifications() -> Iterator[Metric]:
    requests = CounterMetricFamily("statsbot_api_requests", "Notify API responses by endpoint and status "
                                   "(counted by this process).", labels=["endpoint", "status", "process"])
    process = counters.process_label()
    for (endpoint, status), count in sorted(counters.snapshot("api_requests").items()):
        requests.add_metric([endpoint, status, process], count)
    yield requests
    states = dict(TrackedProcess.objects.values_list("state").annotate(n=Count("pk")).order_by())
    tracked = GaugeMetricFamily("statsbot_tracked_processes", "Tracked processes by state.", labels=["state"])
    for state in TrackedProcess.State:
        tracked.add_metric([state.value], states.get(state.value, 0))
    yield tracked
    stalled = GaugeMetricFamily("statsbot_tracked_processes_stalled",
                                "Tracked processes stalled now: their heartbeats stopped (dead-man's switch).")
    stalled.add_metric([], states.get(TrackedProcess.State.STALLED.value, 0))
    yield stalled


class StatsBotCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from _workers()
        yield from _connects()
        yield from _jobs()
        yield from _outbox()
        yield from _notifications()


def registry() -> CollectorRegistry:
    """A registry of our collector alone (not the global one: each scrape reads the database once)."""
    built = CollectorRegistry(auto_describe=False)
    built.register(StatsBotCollector())
    return built
