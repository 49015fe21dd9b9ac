"""What a /metrics scrape and the success-metrics report cost, against plain counts of the same tables.

Builds a fresh SQLite database (or ``--postgres-url``) with N jobs and N outbox messages spread
over two weeks and 500 accounts, then times, best of several runs, in one process:

- the baseline: one ``GROUP BY`` count of the jobs (by action, state) and one of the outbox
  (by kind, state): the least a scrape of those tables must read;
- the Prometheus collection (``ops.prometheus``: what ``GET /metrics`` runs);
- ``ops.metrics.report()`` (the admin page and ``manage.py statsreport``).

Printed as milliseconds and as ratios to the baseline measured in the same run. Timing is only
printed; the exit status is 1 when the figures are wrong (a scrape that misses rows).

Usage (from the repository root):

    python benchmarks/metrics_scrape.py               # N = 20000
    python benchmarks/metrics_scrape.py --quick       # N = 2000
    python benchmarks/metrics_scrape.py --rows 100000 --postgres-url postgres://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def best_of(func: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2000 rows, fewer runs")
    parser.add_argument("--postgres-url", default="", help="a PostgreSQL database to fill (it is flushed)")
    args = parser.parse_args()
    rows = 2_000 if args.quick else args.rows
    runs = 3 if args.quick else 5

    folder = tempfile.mkdtemp(prefix="metrics-bench-")
    os.environ["DATABASE_URL"] = args.postgres_url or f"sqlite:///{folder}/bench.sqlite3"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "statsbot_site.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from accounts.models import Account
    from core.models import OutboxMessage
    from jobs.models import Job
    from ops.metrics import report
    from ops.prometheus import registry

    call_command("migrate", verbosity=0)
    if args.postgres_url:
        call_command("flush", interactive=False, verbosity=0)
    rng = random.Random(7)
    accounts = Account.objects.bulk_create([Account(telegram_user_id=i, chat_id=i) for i in range(1, 501)])
    now = timezone.now()
    jobs = []
    for i in range(rows):
        created = now - timedelta(seconds=rng.randint(0, 14 * 86400))
        state = rng.choice(["succeeded"] * 8 + ["failed", "lost"])
        jobs.append(Job(account=accounts[i % 500], action=rng.choice(["train", "predict", "describe"]), state=state,
                        created_at=created, finished_at=created + timedelta(seconds=rng.randint(1, 600)),
                        error_code="" if state == "succeeded" else rng.choice(["file_not_found", "bad_target"])))
    Job.objects.bulk_create(jobs, batch_size=2000)
    OutboxMessage.objects.bulk_create(
        [OutboxMessage(account=accounts[i % 500], chat_id=i % 500 + 1, text="x", state="sent",
                       attempts=rng.choice([1, 1, 1, 2]), claimed_at=now) for i in range(rows)], batch_size=2000)

    def baseline() -> None:
        with connection.cursor() as cursor:
            for table, columns in ((Job._meta.db_table, "action, state"),
                                   (OutboxMessage._meta.db_table, "kind, state")):
                cursor.execute(f"SELECT {columns}, COUNT(*) FROM {table} GROUP BY {columns}")
                cursor.fetchall()

    base = best_of(baseline, runs * 2)
    scrape = best_of(lambda: generate_latest(registry()), runs)
    summary = best_of(report, runs)

    finished = sum(s.value for f in text_string_to_metric_families(generate_latest(registry()).decode())
                   for s in f.samples if s.name == "statsbot_jobs_finished_total")
    backend = "PostgreSQL" if args.postgres_url else "SQLite"
    print(f"{backend}: {rows} jobs, {rows} outbox messages")
    print(f"  baseline, two GROUP BY counts:  {base * 1000:8.1f} ms")
    print(f"  /metrics collection:            {scrape * 1000:8.1f} ms  = {scrape / base:5.1f}x baseline")
    print(f"  success-metrics report():       {summary * 1000:8.1f} ms  = {summary / base:5.1f}x baseline")
    if finished != rows:
        print(f"WRONG: /metrics counted {finished} finished jobs of {rows}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
