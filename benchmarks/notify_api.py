"""POST /api/notify against a bare Django view on the same server, on SQLite and PostgreSQL.

For each database and each HTTP server (``--server``: daphne, uvicorn, gunicorn with uvicorn
workers): migrate a fresh database, issue API keys, start the server as the Procfile would
(``DEBUG=false``) with the site plus a bare view (``benchmarks/notify_site.py``), and drive
both with c concurrent keep-alive clients (c = 1, 10, 50). With more than one server, the
summary also compares each server's throughput with the first one's, same run: how the server
in the Procfile was chosen. Printed: requests/s, p50 and p99
latency, 5xx and other refusals, and notify's throughput as a ratio of the bare view's, measured in
the same run. Afterwards every accepted (202) notification must be a row in the outbox.

Also printed: the rate limiter alone (one upsert per request, in a transaction, as the API runs
it) against the same counters kept in Redis, which is how the limiter's home was chosen.

Usage (from the repository root):

    python benchmarks/notify_api.py                 # full: 10 s per point, both databases
    python benchmarks/notify_api.py --quick         # CI: 2 s per point, c = 10 and 50, the Procfile's server
    python benchmarks/notify_api.py --server daphne,uvicorn,gunicorn:2   # gunicorn with 2 uvicorn workers
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
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


APP = "statsbot_site.asgi:application"
WS_MAX_SIZE = 1024 * 1024  # as daphne's default: worker frames stay far below it


def procfile_server() -> str:
    """The server the Procfile's ``web:`` line runs (the default of ``--quick``)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return next((name for name in SERVERS if name in line.split()[1]), "daphne")
    return "daphne"


SERVERS = ("daphne", "uvicorn", "gunicorn")


def server_command(server: str, port: int) -> list[str]:
    """How each server is started: one process (gunicorn: ``gunicorn:N`` uvicorn workers, default 1),
    no access log (the load balancer keeps one), WebSocket frames capped at 1 MiB."""
    name, _, workers = server.partition(":")
    if name == "daphne":
        return [sys.executable, "-m", "daphne", "--bind", "127.0.0.1", "--port", str(port), "-v", "0", APP]
    if name == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--no-proxy-headers",
                "--lifespan", "off", "--ws-max-size", str(WS_MAX_SIZE), APP]
    if name == "gunicorn":
        return [sys.executable, "-m", "gunicorn", "--worker-class", "uvicorn.workers.UvicornWorker",
                "--workers", workers or "1", "--bind", f"127.0.0.1:{port}", APP]
    raise SystemExit(f"unknown server {server!r}; use daphne, uvicorn or gunicorn[:workers]")


@contextmanager
def serve(server: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """One server (``daphne``, ``uvicorn`` or ``gunicorn[:workers]``) on a free port; yields its URL."""
    with serve_process(server, env, log) as (url, _pid):
        yield url


@contextmanager
def serve_process(server: str, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """As ``serve``, yielding the URL and the server's process id once it answers."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(server_command(server, port), cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{server} exited with {process.returncode}; see {log}")
            try:  # an answer, not an open port: gunicorn's master listens before its workers run
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                    break
            except urllib.error.HTTPError:
                break  # answered (503 while a backend warms up is an answer)
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{server} did not answer within 30 s; see {log}")
        yield f"http://127.0.0.1:{port}", process.pid
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
    server: str = "daphne"
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


def run_backend(backend: Backend, servers: list[str], args: argparse.Namespace,
                workdir: Path) -> tuple[list[Point], list[str]]:
    """Every server at once on one fresh database, measured in turn at each point (so a change in
    the machine's load while the run goes on does not favour one server)."""
    problems: list[str] = []
    workdir = workdir / backend.name.replace(" ", "_")
    workdir.mkdir()
    env = backend.env(workdir)
    manage(env, "migrate", "--noinput")
    keys = json.loads(subprocess.run(
        [sys.executable, __file__, "--make-keys", str(args.keys)], cwd=ROOT, env=env, capture_output=True,
        text=True, check=True, timeout=300).stdout)
    points: list[Point] = []
    accepted = 0
    logs = {server: workdir / f"{server.replace(':', '-')}.log" for server in servers}
    with ExitStack() as running:
        urls = {server: running.enter_context(serve(server, env, logs[server])) for server in servers}
        for concurrency in args.concurrency:
            for target in ("bare", "notify"):
                for server in servers:
                    point = Point(backend.name, concurrency, target, server)
                    measure(urls[server], backend, point, args, keys)
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
            problems.append(f"{point.server} {backend.name} c={point.concurrency} {point.target}: "
                            f"{point.server_errors} 5xx/errors")
    for server, log in logs.items():
        if log.exists() and "database is locked" in log.read_text(errors="replace"):
            problems.append(f"{server} {backend.name}: 'database is locked' in the server log")
    limiter_env = {**env, "BENCH_REDIS_URL": args.redis_url if args.redis_url else ""}
    timings = json.loads(subprocess.run(
        [sys.executable, __file__, "--limiter", str(args.limiter_rounds)], cwd=ROOT, env=limiter_env,
        capture_output=True, text=True, check=True, timeout=300).stdout)
    print("  rate limiter alone: " + ", ".join(f"{name} {us:.0f} µs/request" for name, us in timings.items()))
    return points, problems


def measure(url: str, backend: Backend, point: Point, args: argparse.Namespace, keys: list[str]) -> None:
    stop: list[bool] = []
    seen: list[int] = []
    sampler = None
    if backend.database_url:
        sampler = threading.Thread(target=peak_connections, args=(backend.database_url, stop, seen), daemon=True)
        sampler.start()
    try:
        asyncio.run(load(url, point.target, point.concurrency, args.duration, keys, point))
    finally:
        if sampler is not None:
            stop.append(True)
            sampler.join()
            point.peak_connections = max(seen, default=0)


def same_point(points: list[Point], like: Point, **differing: str) -> Point | None:
    """The point measured like ``like`` except for ``differing`` (server= or target=)."""
    want = {"server": like.server, "backend": like.backend, "target": like.target, **differing}
    return next((p for p in points if p.concurrency == like.concurrency
                 and all(getattr(p, name) == value for name, value in want.items())), None)


def print_point(point: Point, points: list[Point]) -> None:
    refusals = {status: n for status, n in point.statuses.items() if status >= 300}
    extra = ""
    if point.target == "notify":
        bare = same_point(points, point, target="bare")
        if bare and bare.rate:
            ratio = point.rate / bare.rate
            extra = f"  ratio {ratio:.2f} ({'meets' if ratio >= TARGET_RATIO else 'below'} the {TARGET_RATIO}× target)"
    pool = f"  peak db connections {point.peak_connections}" if point.peak_connections is not None else ""
    print(f"  {point.server:<10} {point.backend:<18} c={point.concurrency:<3} {point.target:<6} {point.rate:8.0f} req/s  "
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
    parser.add_argument("--server", help="comma-separated servers: daphne, uvicorn, gunicorn[:workers] "
                        "(default all three, gunicorn with 1 worker; --quick: the Procfile's)")
    parser.add_argument("--make-keys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-rows", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limiter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if internal(args):
        return 0
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.concurrency = args.concurrency or ([10, 50] if args.quick else [1, 10, 50])
    servers = args.server.split(",") if args.server else ([procfile_server()] if args.quick else list(SERVERS))
    for server in servers:
        server_command(server, 0)  # an unknown name stops here, before any work
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
    print(f"notify API vs a bare Django view, servers {', '.join(servers)}, {args.duration:g} s per point "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    problems: list[str] = []
    all_points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        for backend in backends:
            if backend.database_url and not fresh_postgres(backend.database_url):
                continue
            points, found = run_backend(backend, servers, args, Path(tmp))
            all_points += points
            problems += found
    print()
    print("summary: notify req/s as a fraction of the bare view's, same server, same run")
    for point in all_points:
        if point.target != "notify":
            continue
        bare = same_point(all_points, point, target="bare")
        ratio = point.rate / bare.rate if bare and bare.rate else 0.0
        print(f"  {point.server:<10} {point.backend:<18} c={point.concurrency:<3} {ratio:.2f}×  (notify "
              f"{point.rate:.0f}, bare {bare.rate if bare else 0:.0f} req/s; 5xx {point.server_errors})")
    if len(servers) > 1:
        print()
        print(f"servers: req/s as a multiple of {servers[0]}'s, same database, same load, same run")
        for point in all_points:
            if point.server == servers[0]:
                continue
            first = same_point(all_points, point, server=servers[0])
            ratio = point.rate / first.rate if first and first.rate else 0.0
            print(f"  {point.server:<10} {point.backend:<18} c={point.concurrency:<3} {point.target:<6} "
                  f"{ratio:.2f}×  ({point.rate:.0f} vs {first.rate if first else 0:.0f} req/s; "
                  f"p99 {point.percentile(0.99):.0f} vs {first.percentile(0.99) if first else 0:.0f} ms)")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
