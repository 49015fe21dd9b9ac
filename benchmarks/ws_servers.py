"""Worker WebSockets per HTTP server: connect + auth rate and memory per idle connection.

For each server (``--server``: daphne, uvicorn, gunicorn[:workers], as ``notify_api.py`` starts
them) on one fresh database: N simulated workers open a WebSocket to ``/ws/worker/`` at once,
each sends the real ``auth`` frame with its own one-time connect token (docs/worker-protocol.md)
and waits for ``auth_response``. Printed: workers authenticated per second, auth latency p50 and
p99, failures, and the server's RSS growth per connected worker once all are idle. Baseline, same
run: a bare ``websockets`` server in its own process that answers every auth frame at once, with
the same clients. Servers are measured in turn at each N, so the machine's changing load does not
favour one.

Usage (from the repository root):

    python benchmarks/ws_servers.py                       # N = 100 and 500, SQLite and PostgreSQL
    python benchmarks/ws_servers.py --quick               # N = 50, SQLite, the Procfile's server
    python benchmarks/ws_servers.py --server daphne,uvicorn --counts 200 --backends postgres

Exit status 1 when a worker was refused for another reason than time (an auth timeout is a
figure, printed; a refused token or a broken connection fails the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from notify_api import (  # noqa: E402 - a sibling script
    ROOT,
    SERVERS,
    Backend,
    free_port,
    fresh_postgres,
    manage,
    procfile_server,
    serve_process,
    server_command,
)

MACHINE = {"machine_id": "bench", "hostname": "bench-box", "platform": "Linux", "os_release": "6.1",
           "python": "3.11.7", "worker_version": "1.0.0", "packages": {}, "models": ["lightgbm"]}
AUTH_WAIT = 60.0


def make_tokens(count: int) -> None:
    """(In a subprocess with the backend's settings.) ``count`` accounts, one connect token each."""
    import django

    django.setup()
    from accounts.models import Account
    from workers.models import ConnectToken

    first = 8_000_000 + Account.objects.count()
    accounts = Account.objects.bulk_create(
        Account(telegram_user_id=first + n, chat_id=first + n, first_name="Bench") for n in range(count))
    print(json.dumps([ConnectToken.issue(account)[1] for account in accounts]))


BARE_SERVER = '''
import asyncio, json, sys
from websockets.asyncio.server import serve

async def handler(ws):
    frame = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "auth_response", "success": frame.get("type") == "auth",
                              "heartbeat_interval": 20}))
    async for _ in ws:
        pass

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), max_size=2**20):
        await asyncio.Future()

asyncio.run(main())
'''


@contextmanager
def bare_server() -> Iterator[tuple[str, list[int]]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", [process.pid]
    finally:
        process.terminate()
        process.wait(10)


def server_pids(root_pid: int) -> list[int]:
    """The process and its children (gunicorn's workers)."""
    pids = [root_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root_pid:
                pids.append(int(entry.name))
    return pids


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Run:
    server: str
    backend: str
    count: int
    turn: int = 0  # which round of the run: ratios compare runs of the same round
    seconds: float = 0.0
    accepted: int = 0
    failed: Counter[str] = field(default_factory=lambda: Counter())
    latencies: list[float] = field(default_factory=list)
    rss_per_connection: float = float("nan")

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def connect_all(url: str, tokens: list[str], run: Run, pids: list[int]) -> None:
    """Every worker connects and authenticates at once; all stay connected until RSS is read."""
    import websockets

    ws_url = url.replace("http://", "ws://") + "/ws/worker/"
    sockets = []
    before = rss_kib(pids)

    async def worker(token: str) -> None:
        started = time.perf_counter()
        try:
            socket = await asyncio.wait_for(websockets.connect(ws_url, max_size=2**20, open_timeout=AUTH_WAIT),
                                            AUTH_WAIT)
            sockets.append(socket)
            await socket.send(json.dumps({"type": "auth", "machine": MACHINE, "running_jobs": [], "token": token}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), AUTH_WAIT))
                if frame.get("type") == "auth_response":
                    break
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            run.failed[type(exc).__name__] += 1
            return
        if frame.get("success"):
            run.accepted += 1
            run.latencies.append(time.perf_counter() - started)
        else:
            run.failed[str(frame.get("code"))] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(token) for token in tokens))
    run.seconds = time.perf_counter() - started
    await asyncio.sleep(2)  # idle: let the servers settle before reading memory (not synchronisation)
    if run.accepted:
        run.rss_per_connection = (rss_kib(pids) - before) / run.accepted
    await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)


def run_backend(backend: Backend, servers: list[str], counts: list[int], workdir: Path) -> list[Run]:
    """Each N: every server in turn (a different one first each time), each a fresh process with
    fresh connect tokens (they expire after 5 minutes), stopped before the next one starts."""
    workdir = workdir / backend.name.replace(" ", "_")
    workdir.mkdir()
    env = backend.env(workdir)
    manage(env, "migrate", "--noinput")
    names = [*servers, "bare websockets"]
    runs: list[Run] = []
    for turn, count in enumerate(counts):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            run = Run(name, backend.name, count, turn)
            if name == "bare websockets":
                with bare_server() as (url, pids):
                    asyncio.run(connect_all(url, ["bare"] * count, run, pids))
            else:
                tokens = json.loads(subprocess.run(
                    [sys.executable, __file__, "--make-tokens", str(count)], cwd=ROOT, env=env,
                    capture_output=True, text=True, check=True, timeout=600).stdout)
                log = workdir / f"{name.replace(':', '-')}.log"
                with serve_process(name, env, log) as (url, pid):
                    asyncio.run(connect_all(url, tokens, run, server_pids(pid)))
            runs.append(run)
            print_run(run, runs)
    return runs


def print_run(run: Run, runs: list[Run]) -> None:
    bare = next((r for r in runs if r.server == "bare websockets" and r.backend == run.backend
                 and r.turn == run.turn), None)
    ratio = f"  {run.rate / bare.rate:.2f}× the bare server" if bare and bare.rate and bare is not run else ""
    print(f"  {run.server:<16} {run.backend:<18} N={run.count:<5} {run.rate:7.1f} workers/s  "
          f"auth p50 {run.percentile(0.5) * 1000:7.0f} ms  p99 {run.percentile(0.99) * 1000:7.0f} ms  "
          f"failed {dict(run.failed) or 0}  RSS {run.rss_per_connection:5.1f} KiB/connection{ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: N = 50, SQLite, the Procfile's server")
    parser.add_argument("--server", help="comma-separated: daphne, uvicorn, gunicorn[:workers] (default all three)")
    parser.add_argument("--counts", help="comma-separated numbers of workers (default 100,500)")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/statsbot_bench_ws"),
        help="a database this benchmark may drop and create")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--make-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_tokens:
        make_tokens(args.make_tokens)
        return 0
    servers = args.server.split(",") if args.server else ([procfile_server()] if args.quick else list(SERVERS))
    for server in servers:
        server_command(server, 0)
    counts = [int(n) for n in args.counts.split(",")] if args.counts else ([50] if args.quick else [100, 500])
    names = ["sqlite"] if args.quick else args.backends.split(",")
    backends = []
    if "sqlite" in names:
        backends.append(Backend("sqlite", ""))
    if "postgres" in names:
        backends.append(Backend("postgres pool=10", args.postgres_url, pool_size=10, redis_url=args.redis_url))
    print(f"worker connect + auth per server, baseline a bare websockets server (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs)")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="ws-servers-") as tmp:
        for backend in backends:
            if backend.database_url and not fresh_postgres(backend.database_url):
                continue
            runs += run_backend(backend, servers, counts, Path(tmp))
    print()
    print("summary: connect + auth rate as a multiple of the bare websockets server's, same clients, same run")
    for run in runs:
        bare = next((r for r in runs if r.server == "bare websockets" and r.backend == run.backend
                     and r.turn == run.turn), None)
        if run.server != "bare websockets" and bare and bare.rate:
            print(f"  {run.server:<12} {run.backend:<18} N={run.count:<5} {run.rate / bare.rate:.2f}×  "
                  f"({run.rate:.1f} vs {bare.rate:.1f} workers/s; RSS {run.rss_per_connection:.0f} vs "
                  f"{bare.rss_per_connection:.0f} KiB/connection)")
    # Timing is printed, not judged: a worker that ran out of time (the consumer's auth timeout, or
    # ours) is a figure. A refused secret or a broken connection is a defect.
    timing = {"auth_timeout", "TimeoutError"}
    failed = [r for r in runs if set(r.failed) - timing]
    if failed:
        print("\nPROBLEMS:\n  " + "\n  ".join(f"{r.server} {r.backend} N={r.count}: {dict(r.failed)}" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
