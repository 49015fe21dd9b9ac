"""N simulated workers against one web process, and the same clients against a bare server.

Each simulated worker does the real handshake of docs/worker-protocol.md (WebSocket, ``auth``
with its credential, ``auth_response``), then idles as the worker script does: a ``ping`` every
``heartbeat_interval`` (20 s), answering ``job`` frames at once with a ``result``. One web process
runs as the Procfile runs it (``--server daphne``, the default; ``--server uvicorn`` to compare).
The baseline, measured in the same run with the same clients, is a bare ``websockets`` server
that answers ``auth`` and ``ping`` from memory (no Django, no database); and, to show what the
product's own work costs, the same HTTP server and Channels with a consumer answering from memory
(``benchmarks/ws_ceiling.py``: the "ceiling", the fastest the product could be on that server).

Printed for each N: connect + auth rate (and auth p50/p99), the server's CPU time per connection
while connecting, the server's RSS per connection
(RSS with N connected minus RSS before, over N), the server's CPU while the N workers idle (% of
one core), drops (connections closed during the idle window), and the job round trip p50/p99
(``submit_job`` in this process → the worker's ``result`` stored, seen as the ``result_ack``).
The round trip needs a channel layer shared with the server (``REDIS_URL``; the doorbell from
this process cannot reach an in-memory layer in the server, where only the 20 s safety flush would
dispatch): without one it is skipped and says so.

Usage (from the repository root):

    python benchmarks/ws_scale.py --quick                    # CI: N = 50, 10 s idle
    python benchmarks/ws_scale.py --n 100,1000,2000 --idle 60
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench REDIS_URL=redis://127.0.0.1:6379/3 \\
        python benchmarks/ws_scale.py --n 100,1000 --server uvicorn

DATABASE_URL (PostgreSQL; the database is dropped and created) or a fresh SQLite file. Exit status 1
when a worker could not authenticate, a connection dropped or a job did not come back: speed only
prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MACHINE = {"machine_id": "bench", "hostname": "bench-box", "platform": "Linux", "os_release": "6.1",
           "python": "3.11.7", "worker_version": "1.0.0", "packages": {}, "models": ["linear"]}
HEARTBEAT = 20.0
CEILING_APP = "benchmarks.ws_ceiling:application"  # the same server and Channels, answering from memory
TARGETS = {"connect_ratio": 0.5, "kib_per_connection": 50.0, "idle_cpu_percent": 5.0, "round_trip_p99_ms": 100.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ the bare baseline


def bare_server(port: int) -> None:
    """A bare ``websockets`` server: answers ``auth`` and ``ping`` from memory."""
    import websockets

    async def handler(ws: Any) -> None:
        async for text in ws:
            frame = json.loads(text)
            if frame.get("type") == "auth":
                await ws.send(json.dumps({"type": "auth_response", "success": True, "worker_id": 1,
                                          "heartbeat_interval": HEARTBEAT}))
            elif frame.get("type") == "ping":
                await ws.send('{"type": "pong"}')

    async def main() -> None:
        async with websockets.serve(handler, "127.0.0.1", port, max_size=1024 * 1024):
            await asyncio.Future()

    asyncio.run(main())


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextmanager
def server_process(kind: str, env: dict[str, str], log: Path, app: str = "statsbot_site.asgi:application",
                   ) -> Iterator[tuple[str, int]]:
    """``kind`` (daphne, uvicorn or bare) serving ``app`` on a free port: its URL and pid."""
    port = free_port()
    commands = {
        "daphne": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app],
        "uvicorn": [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets",
                    "--log-level", "warning", app],
        "bare": [sys.executable, __file__, "--bare-server", str(port)],
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(commands[kind], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{kind} exited with {process.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} did not listen within 60 s; see {log}") from None
                time.sleep(0.1)
        path = "/ws/worker/" if kind != "bare" else "/"
        yield f"ws://127.0.0.1:{port}{path}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------ the simulated workers


@dataclass
class Fleet:
    url: str
    credentials: list[str]
    sockets: list[Any] = field(default_factory=list)
    connected: list[int] = field(default_factory=list)  # indexes into credentials, in sockets' order
    auth_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    acks: dict[str, float] = field(default_factory=dict)  # job id → when its result_ack arrived
    jobs_seen: dict[str, float] = field(default_factory=dict)  # job id → when its job frame arrived
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ack_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, index: int) -> None:
        credential = self.credentials[index]
        import websockets

        started = time.perf_counter()
        try:
            async with asyncio.timeout(240):
                ws = await websockets.connect(self.url, open_timeout=120, ping_interval=None, max_size=2**20)
                await ws.send(json.dumps({"type": "auth", "credential": credential, "machine": MACHINE,
                                          "running_jobs": []}))
                response = json.loads(await ws.recv())
        except Exception as exc:  # noqa: BLE001 - counted and printed
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        if not response.get("success"):
            self.failures.append(str(response))
            return
        self.auth_seconds.append(time.perf_counter() - started)
        self.sockets.append(ws)
        self.connected.append(index)

    async def connect_all(self, concurrency: int) -> float:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                await self.connect(index)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(self.credentials))))
        return time.perf_counter() - started

    def start_idling(self) -> None:
        self.tasks = [asyncio.create_task(self.idle(ws, n)) for n, ws in enumerate(self.sockets)]

    async def idle(self, ws: Any, n: int) -> None:
        """Ping every heartbeat (spread over the interval, as independent workers are); answer jobs."""
        import websockets

        next_ping = time.monotonic() + HEARTBEAT * (n % 97) / 97
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancel that
                    # ends the idle phase, and one of 2,000 tasks then idles forever.
                    async with asyncio.timeout(max(0.0, next_ping - time.monotonic())):
                        text = await ws.recv()
                except TimeoutError:
                    await ws.send('{"type": "ping"}')
                    next_ping = time.monotonic() + HEARTBEAT
                    continue
                frame = json.loads(text)
                if frame["type"] == "job":
                    self.jobs_seen[frame["job_id"]] = time.perf_counter()
                    await ws.send(json.dumps({"type": "result", "job_id": frame["job_id"], "success": True,
                                              "data": {"models": []}}))
                elif frame["type"] == "result_ack":
                    self.acks[frame["job_id"]] = time.perf_counter()
                    self.ack_arrived.set()
        except websockets.ConnectionClosed as closed:
            self.drops.append(f"worker {n}: {closed.rcvd}")
        except asyncio.CancelledError:
            pass

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)
        if self.sockets:
            await asyncio.wait([asyncio.ensure_future(ws.close()) for ws in self.sockets], timeout=60)


# ------------------------------------------------------------------------------ one measurement


@dataclass
class Figures:
    n: int
    connected: int = 0
    connect_rate: float = 0.0
    auth_p50_ms: float = 0.0
    auth_p99_ms: float = 0.0
    kib_per_connection: float = 0.0
    idle_cpu_percent: float = 0.0
    connect_cpu_ms: float = 0.0  # the server's CPU time per connection while connecting
    drops: int = 0
    failures: int = 0
    round_trips_ms: list[float] = field(default_factory=list)
    legs_ms: dict[str, list[float]] = field(default_factory=dict)  # the round trip's three legs
    jobs_lost: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(url: str, pid: int, credentials: list[str], idle: float, jobs: int,
                  accounts: list[int] | None) -> Figures:
    figures = Figures(n=len(credentials))
    fleet = Fleet(url, credentials)
    rss_before = rss_kib(pid)
    cpu_start = cpu_seconds(pid)
    seconds = await fleet.connect_all(concurrency=100)
    figures.connect_cpu_ms = 1000 * (cpu_seconds(pid) - cpu_start) / max(1, len(fleet.sockets))
    figures.connected = len(fleet.sockets)
    figures.failures = len(fleet.failures)
    if fleet.failures:
        print(f"    {len(fleet.failures)} failed to connect, e.g. {fleet.failures[0][:200]}")
    figures.connect_rate = figures.connected / seconds
    figures.auth_p50_ms = percentile(fleet.auth_seconds, 0.5) * 1000
    figures.auth_p99_ms = percentile(fleet.auth_seconds, 0.99) * 1000
    fleet.start_idling()
    await asyncio.sleep(min(5.0, idle))  # let the post-auth work (dispatch checks, notices) settle
    cpu_before, clock_before = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(idle)
    figures.idle_cpu_percent = 100 * (cpu_seconds(pid) - cpu_before) / (time.monotonic() - clock_before)
    figures.kib_per_connection = (rss_kib(pid) - rss_before) / max(1, figures.connected)
    if accounts is not None and jobs:
        connected_accounts = [accounts[i] for i in fleet.connected]  # a job for a worker that did not connect waits
        figures.round_trips_ms, figures.legs_ms, figures.jobs_lost = await round_trips(fleet, connected_accounts, jobs)
    figures.drops = len(fleet.drops)
    if fleet.drops:
        print(f"    {len(fleet.drops)} dropped, e.g. {fleet.drops[0]}")
    await fleet.close()
    return figures


async def round_trips(fleet: Fleet, accounts: list[int], jobs: int) -> tuple[list[float], dict[str, list[float]], int]:
    """``jobs`` jobs, one at a time, to workers spread over the fleet: submit → result stored.

    Also its legs: ``submit`` (``submit_job`` here: the job's row, its chat message's outbox row,
    the doorbell), ``dispatch`` (submitted → the job frame at the worker: the server's claim) and
    ``result`` (the worker's frame arrived → its ``result_ack``: the server stores the result)."""
    from asgiref.sync import sync_to_async

    from accounts.models import Account
    from jobs.models import Job
    from jobs.services import submit_job

    times: list[float] = []
    legs: dict[str, list[float]] = {"submit": [], "dispatch": [], "result": []}
    lost = 0
    step = max(1, len(accounts) // jobs)
    for k in range(jobs):
        account = await sync_to_async(Account.objects.get)(pk=accounts[(k * step) % len(accounts)])
        started = time.perf_counter()
        job = await sync_to_async(submit_job)(account, Job.Action.LIST_MODELS)
        submitted = time.perf_counter()
        deadline = time.monotonic() + 30
        while str(job.id) not in fleet.acks and time.monotonic() < deadline:
            fleet.ack_arrived.clear()
            try:
                await asyncio.wait_for(fleet.ack_arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        job_id = str(job.id)
        if job_id in fleet.acks:
            times.append((fleet.acks[job_id] - started) * 1000)
            legs["submit"].append((submitted - started) * 1000)
            legs["dispatch"].append((fleet.jobs_seen[job_id] - submitted) * 1000)
            legs["result"].append((fleet.acks[job_id] - fleet.jobs_seen[job_id]) * 1000)
        else:
            lost += 1
    return times, legs, lost


# ------------------------------------------------------------------------------ setup


def backend_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    env.update({"DJANGO_SETTINGS_MODULE": "statsbot_site.settings", "PYTHONPATH": str(ROOT), "DEBUG": "false",
                "SECRET_KEY": secrets.token_urlsafe(48), "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "PUBLIC_URL": "https://127.0.0.1", "SECURE_SSL_REDIRECT": "false", "LOG_LEVEL": "WARNING",
                "MEDIA_ROOT": str(workdir / "media")})
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    else:
        fresh_postgres(env["DATABASE_URL"])
    return env


def fresh_postgres(url: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{parts.path.lstrip("/")}"')


def enroll(count: int) -> tuple[list[int], list[str]]:
    """``count`` accounts with an enrolled worker each, offline as after a deploy (they had
    connected before, so reconnecting is silent); their ids and credentials."""
    from django.utils import timezone

    from accounts.models import Account
    from core.secrets import new_secret
    from workers.models import Worker

    now = timezone.now()
    base = 8_000_000 + Account.objects.count()
    accounts = Account.objects.bulk_create(
        Account(telegram_user_id=base + n, chat_id=base + n, first_name="Bench") for n in range(count))
    secrets_ = [new_secret("sbw") for _ in accounts]
    fields = Worker.machine_fields(MACHINE)
    Worker.objects.bulk_create(
        Worker(account=a, credential_hash=s.hash, credential_prefix=s.prefix, connected_at=now, disconnected_at=now,
               **fields)
        for a, s in zip(accounts, secrets_, strict=True))
    return [a.pk for a in accounts], [s.raw for s in secrets_]


# ------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 50, 10 s idle, 20 jobs (CI)")
    parser.add_argument("--n", default="100,1000,2000", help="comma-separated worker counts")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle measured per N (issue: 600)")
    parser.add_argument("--baseline-idle", type=float,
                        help="seconds of idle for the bare server and the ceiling (default: --idle)")
    parser.add_argument("--jobs", type=int, default=100, help="job round trips measured per N")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return 0
    sizes = [50] if args.quick else [int(n) for n in args.n.split(",")]
    idle = 10.0 if args.quick else args.idle
    jobs = 20 if args.quick else args.jobs
    baseline_idle = idle if args.baseline_idle is None else args.baseline_idle

    workdir = Path(tempfile.mkdtemp(prefix="ws_scale-"))
    env = backend_env(workdir)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    shared_layer = bool(env.get("REDIS_URL"))
    database = "PostgreSQL" if env["DATABASE_URL"].startswith("postgres") else "SQLite"
    print(f"ws_scale: {args.server} vs a bare websockets server; {database}, "
          f"{'Redis' if shared_layer else 'in-memory'} channel layer; idle window {idle:.0f} s; "
          f"{os.cpu_count()} cores")
    if not shared_layer:
        print("  (job round trips skipped: they need REDIS_URL, a channel layer shared with the server)")
    failed = False
    rows = []
    for n in sizes:
        accounts, credentials = enroll(n)
        with server_process(args.server, env, workdir / f"{args.server}.log") as (url, pid):
            ours = asyncio.run(measure(url, pid, credentials, idle, jobs, accounts if shared_layer else None))
        with server_process("bare", env, workdir / "bare.log") as (url, pid):
            bare = asyncio.run(measure(url, pid, credentials, baseline_idle, 0, None))
        with server_process(args.server, env, workdir / "ceiling.log", CEILING_APP) as (url, pid):
            ceiling = asyncio.run(measure(url, pid, credentials, baseline_idle, 0, None))
        rows.append((ours, bare, ceiling))
        report(args.server, ours, bare, ceiling)
        failed |= bool(ours.failures or ours.drops or ours.jobs_lost or ours.connected < n)
    print("\nsummary (ratio = StatsBot / bare server; targets from issue 13):")
    for ours, bare, ceiling in rows:
        ratio = ours.connect_rate / bare.connect_rate if bare.connect_rate else float("nan")
        p99 = percentile(ours.round_trips_ms, 0.99)
        of_ceiling = (f" = {ours.connect_rate / ceiling.connect_rate:.2f}x the same server + Channels answering from "
                      f"memory ({ceiling.connect_rate / bare.connect_rate:.2f}x bare)" if ceiling.connect_rate else "")
        print(f"  N={ours.n:5d}: connect+auth {ratio:.2f}x bare{of_ceiling} (target ≥ {TARGETS['connect_ratio']}), "
              f"{ours.kib_per_connection:.0f} KiB/conn (≤ {TARGETS['kib_per_connection']:.0f}), "
              f"idle CPU {ours.idle_cpu_percent:.1f} % (< {TARGETS['idle_cpu_percent']:.0f} %), "
              f"drops {ours.drops}, round trip p99 "
              + (f"{p99:.0f} ms (< {TARGETS['round_trip_p99_ms']:.0f})" if ours.round_trips_ms else "n/a"))
    return 1 if failed else 0


def report(server: str, ours: Figures, bare: Figures, ceiling: Figures) -> None:
    print(f"\nN = {ours.n}")
    print(f"  {'':10s} {'connected':>9s} {'conn/s':>8s} {'auth p50':>9s} {'auth p99':>9s} {'KiB/conn':>9s} "
          f"{'idle CPU':>9s} {'drops':>6s} {'CPU/conn':>9s}")
    for name, f in ((server, ours), ("bare", bare), ("ceiling", ceiling)):
        print(f"  {name:10s} {f.connected:9d} {f.connect_rate:8.0f} {f.auth_p50_ms:7.0f}ms {f.auth_p99_ms:7.0f}ms "
              f"{f.kib_per_connection:9.1f} {f.idle_cpu_percent:8.1f}% {f.drops:6d} {f.connect_cpu_ms:7.1f}ms")
    if ours.round_trips_ms:
        print(f"  job round trip (submit → result stored), {len(ours.round_trips_ms)} jobs: "
              f"p50 {percentile(ours.round_trips_ms, 0.5):.1f} ms, p90 {percentile(ours.round_trips_ms, 0.9):.1f} ms, "
              f"p99 {percentile(ours.round_trips_ms, 0.99):.1f} ms, max {max(ours.round_trips_ms):.1f} ms, "
              f"mean {statistics.fmean(ours.round_trips_ms):.1f} ms; lost {ours.jobs_lost}")
        print("    legs (p50 / p99): " + ", ".join(
            f"{leg} {percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f} ms"
            for leg, values in ours.legs_ms.items()))


if __name__ == "__main__":
    sys.exit(main())
