"""POST /api/notify against a bare Django view on the same server, on SQLite and PostgreSQL.

For each database: migrate a fresh one, issue API keys, start one daphne process as the Procfile
does (``DEBUG=false``) with the site plus a bare view (``benchmarks/notify_site.py``), and drive
both with c concurrent keep-alive clients (c = 1, 10, 50). Printed: requests/s, p50 and p99
latency, 5xx and other refusals, and notify's throughput as a ratio of the bare view's, measured in
the same run. Afterwards every accepted (202) notification must be a row in the outbox.

Also printed: the rate limiter alone (one upsert per request, in a transaction, as the API runs
it) against the same counters kept in Redis, which is how the limiter's home was chosen.

Usage (from the repository root):

    python benchmarks/notify_api.py                 # full: 10 s per point, both databases
    python benchmarks/notify_api.py --quick         # CI: 2 s per point, c = 10 and 50
    python benchmarks/notify_api.py --pool-sizes 10,0 --postgres-url postgres://postgres@127.0.0.1:5432/bench

Exit status 1 when any request got a 5xx or an accepted message has no row (a speed shortfall
only prints: timing belongs here, not in pass/fail).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.5
BODY = {"text": "epoch 12/100 done: loss 0.1234, accuracy 0.9876", "level": "info",
        "metadata": {"host": "gpu-box", "python": "3.11.7", "git": "4f2c9e1"}}


# ---------------------------------------------------------------------------------- environments


@dataclass
class Backend:
    name: str  # as printed
    database_url: str  # "" for the embedded SQLite default
    pool_size: int | None = None
    redis_url: str = ""

    def env(self, workdir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DATABASE_POOL_SIZE")}
        env.update({
            "DJANGO_SETTINGS_MODULE": "benchmarks.notify_site",
            "PYTHONPATH": str(ROOT),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PUBLIC_URL": "https://127.0.0.1",
            "SECURE_SSL_REDIRECT": "false",
            "LOG_LEVEL": "INFO",
            "MEDIA_ROOT": str(workdir / "media"),
        })
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        else:
            env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
        if self.pool_size is not None:
            env["DATABASE_POOL_SIZE"] = str(self.pool_size)
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env


def fresh_postgres(url: str) -> bool:
    """Drop and create the database named in ``url``; False when PostgreSQL is not reachable."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"  PostgreSQL at {parts.hostname}:{parts.port} not reachable ({exc}); skipped")
        return False
    return True


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def make_keys(count: int) -> None:
    """(In a subprocess with the backend's settings.) Issue ``count`` keys; print them as JSON."""
    import django

    django.setup()
    from accounts.models import Account, ApiKey
    from core.secrets import new_secret

    accounts = Account.objects.bulk_create(
        Account(telegram_user_id=9_000_000 + n, chat_id=9_000_000 + n, first_name="Bench") for n in range(count))
    raws, keys = [], []
    for account in accounts:
        secret = new_secret("exp")
        raws.append(secret.raw)
        keys.append(ApiKey(account=account, prefix=secret.prefix, secret_hash=secret.hash))
    ApiKey.objects.bulk_create(keys)
    print(json.dumps(raws))


def count_rows() -> None:
    import django

    django.setup()
    from core.models import OutboxMessage

    print(OutboxMessage.objects.filter(kind="notify").count())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def daphne(env: dict[str, str], log: Path) -> Iterator[str]:
    """One daphne process, as the Procfile's ``web:`` runs it."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "--bind", "127.0.0.1", "--port", str(port),
             "statsbot_site.asgi:application"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"daphne exited with {process.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"daphne did not listen within 30 s; see {log}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------- load


@dataclass
class Point:
    backend: str
    concurrency: int
    target: str
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0  # connection failures, timeouts
    peak_connections: int | None = None  # PostgreSQL backends of the database while it ran

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500) + self.errors


async def load(url: str, target: str, concurrency: int, seconds: float, keys: list[str], point: Point) -> None:
    import aiohttp

    path = "/api/notify" if target == "notify" else "/bench/bare"
    body = json.dumps(BODY).encode()
    next_key = iter(range(10**12))
    warmup_end = time.monotonic() + min(1.0, seconds / 4)
    end = warmup_end + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            now = time.monotonic()
            if now >= end:
                return
            key = keys[next(next_key) % len(keys)]
            started = time.perf_counter()
            try:
                async with session.post(url + path, data=body, headers={
                        "Content-Type": "application/json", "Authorization": f"Bearer {key}"}) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            elapsed = time.perf_counter() - started
            if now >= warmup_end and time.monotonic() <= end:  # started and finished in the window
                point.requests += 1
                point.latencies.append(elapsed)
                if status:
                    point.statuses[status] += 1
                else:
                    point.errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    point.seconds = seconds


def peak_connections(database_url: str, stop: list[bool], out: list[int]) -> None:
    """Sample the database's backend count every 50 ms until ``stop`` (PostgreSQL only)."""
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        while not stop:
            count = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]).fetchone()[0]
            out.append(count)
            time.sleep(0.05)


# ---------------------------------------------------------------------------------- the limiter alone


def limiter(rounds: int) -> None:
    """(In a subprocess with the backend's settings.) Microseconds per request for the limiter:
    the upsert in its own transaction, and the same windows in Redis (INCRBY + EXPIRE, pipelined)."""
    import django

    django.setup()
    from django.db import transaction

    from accounts.models import ApiKey
    from notifications import ratelimit

    key_ids = list(ApiKey.objects.values_list("pk", flat=True)[:50])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for n in range(rounds):
        with transaction.atomic():
            ratelimit.charge(key_ids[n % len(key_ids)], messages=1, size=200)
    timings["database upsert"] = (time.perf_counter() - started) / rounds * 1e6
    redis_url = os.environ.get("BENCH_REDIS_URL")
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        windows = [*ratelimit.WINDOWS, ratelimit.MESSAGES_PER_MINUTE, ratelimit.BYTES_PER_MINUTE]
        started = time.perf_counter()
        for n in range(rounds):
            pipe = client.pipeline(transaction=False)
            now = int(time.time())
            for w in windows:
                name = f"bench:rl:{n % 50}:{w.name}:{now // w.seconds}"
                pipe.incrby(name, 1)
                pipe.expire(name, w.seconds)
            pipe.execute()
        timings["redis pipeline"] = (time.perf_counter() - started) / rounds * 1e6
    print(json.dumps(timings))


# ---------------------------------------------------------------------------------- main


def internal(args: argparse.Namespace) -> bool:
    if args.make_keys:
        make_keys(args.make_keys)
    elif args.count_rows:
        count_rows()
    elif args.limiter:
        limiter(args.limiter)
    else:
        return False
    return True


def run_backend(backend: Backend, args: argparse.Namespace, workdir: Path) -> tuple[list[Point], list[str]]:
    problems: list[str] = []
    env = backend.env(workdir)
    manage(env, "migrate", "--noinput")
    keys = json.loads(subprocess.run(
        [sys.executable, __file__, "--make-keys", str(args.keys)], cwd=ROOT, env=env, capture_output=True,
        text=True, check=True, timeout=300).stdout)
    points: list[Point] = []
    accepted = 0
    log = workdir / f"daphne-{backend.name.replace(' ', '_')}.log"
    with daphne(env, log) as url:
        for concurrency in args.concurrency:
            for target in ("bare", "notify"):
                point = Point(backend.name, concurrency, target)
                stop: list[bool] = []
                seen: list[int] = []
                sampler = None
                if backend.database_url:
                    import threading

                    sampler = threading.Thread(target=peak_connections, args=(backend.database_url, stop, seen))
                    sampler.start()
                asyncio.run(load(url, target, concurrency, args.duration, keys, point))
                if sampler is not None:
                    stop.append(True)
                    sampler.join()
                    point.peak_connections = max(seen, default=0)
                points.append(point)
                if target == "notify":
                    accepted += point.statuses.get(202, 0)
                print_point(point, points)
    rows = int(subprocess.run([sys.executable, __file__, "--count-rows"], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True, timeout=120).stdout.strip())
    # Requests that finished after the measured window still wrote rows: rows >= accepted.
    if rows < accepted:
        problems.append(f"{backend.name}: {accepted} notifications accepted but only {rows} rows")
    if rows >= accepted:
        print(f"  {backend.name}: {accepted} notifications answered 202 in the measured windows, {rows} rows in the "
              "outbox (requests finishing outside the windows add rows): every accepted message is a row")
    for point in points:
        if point.server_errors:
            problems.append(f"{backend.name} c={point.concurrency} {point.target}: {point.server_errors} 5xx/errors")
    if "5xx" not in " ".join(problems) and log.exists() and "database is locked" in log.read_text(errors="replace"):
        problems.append(f"{backend.name}: 'database is locked' in the server log")
    limiter_env = {**env, "BENCH_REDIS_URL": args.redis_url if args.redis_url else ""}
    timings = json.loads(subprocess.run(
        [sys.executable, __file__, "--limiter", str(args.limiter_rounds)], cwd=ROOT, env=limiter_env,
        capture_output=True, text=True, check=True, timeout=300).stdout)
    print("  rate limiter alone: " + ", ".join(f"{name} {us:.0f} µs/request" for name, us in timings.items()))
    return points, problems


def print_point(point: Point, points: list[Point]) -> None:
    refusals = {status: n for status, n in point.statuses.items() if status >= 300}
    extra = ""
    if point.target == "notify":
        bare = next((p for p in points if p.backend == point.backend and p.concurrency == point.concurrency
                     and p.target == "bare"), None)
        if bare and bare.rate:
            ratio = point.rate / bare.rate
            extra = f"  ratio {ratio:.2f} ({'meets' if ratio >= TARGET_RATIO else 'below'} the {TARGET_RATIO}× target)"
    pool = f"  peak db connections {point.peak_connections}" if point.peak_connections is not None else ""
    print(f"  {point.backend:<22} c={point.concurrency:<3} {point.target:<6} {point.rate:8.0f} req/s  "
          f"p50 {point.percentile(0.5):6.1f} ms  p99 {point.percentile(0.99):7.1f} ms  "
          f"5xx {point.server_errors}  refused {refusals or 0}{pool}{extra}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 2 s per point, c = 10 and 50")
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 10, quick 2)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")],
                        help="comma-separated client counts (default 1,10,50; quick 10,50)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/statsbot_bench_notify"),
        help="a database this benchmark may drop and create")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
                        help="the channel layer for the PostgreSQL run, as in production ('' for none)")
    parser.add_argument("--pool-sizes", default="10", help="DATABASE_POOL_SIZE values to run PostgreSQL with "
                        "(0 = no pool, a connection per request)")
    parser.add_argument("--keys", type=int, default=2000, help="API keys the clients rotate through")
    parser.add_argument("--limiter-rounds", type=int, default=2000)
    parser.add_argument("--make-keys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-rows", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limiter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if internal(args):
        return 0
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.concurrency = args.concurrency or ([10, 50] if args.quick else [1, 10, 50])
    if args.quick:
        args.keys = min(args.keys, 600)
        args.limiter_rounds = min(args.limiter_rounds, 300)

    backends: list[Backend] = []
    names = args.backends.split(",")
    if "sqlite" in names:
        backends.append(Backend("sqlite", ""))
    if "postgres" in names:
        for size in (int(s) for s in args.pool_sizes.split(",")):
            label = f"postgres pool={size}" if size else "postgres no pool"
            backends.append(Backend(label, args.postgres_url, pool_size=size, redis_url=args.redis_url))
    print(f"notify API vs a bare Django view, one daphne process, {args.duration:g} s per point "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    problems: list[str] = []
    all_points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        for backend in backends:
            if backend.database_url and not fresh_postgres(backend.database_url):
                continue
            points, found = run_backend(backend, args, Path(tmp))
            all_points += points
            problems += found
    print()
    print("summary: notify req/s as a fraction of the bare view's, same server, same run")
    for point in all_points:
        if point.target != "notify":
            continue
        bare = next(p for p in all_points if p.backend == point.backend and p.concurrency == point.concurrency
                    and p.target == "bare")
        ratio = point.rate / bare.rate if bare.rate else 0.0
        print(f"  {point.backend:<22} c={point.concurrency:<3} {ratio:.2f}×  (notify {point.rate:.0f}, "
              f"bare {bare.rate:.0f} req/s; 5xx {point.server_errors})")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
