"""Reading the environment into one checked configuration.

Kept apart from ``settings.py`` so the parsing rules can be tested with any environment.
Every problem raises ``ImproperlyConfigured`` with the variable's name first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

DEV_SECRET_KEY = "django-insecure-statsbot-development-key-not-for-production"
# The sandbox emulates Telegram's Bot API; with no token the bot talks to it.
SANDBOX_BOT_TOKEN = "123456:SANDBOX-statsbot-local-token"
BOT_TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]{10,}$")
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class Config:
    debug: bool
    secret_key: str
    allowed_hosts: list[str]
    public_url: str
    csrf_trusted_origins: list[str]
    database: dict[str, Any]
    channel_layer: dict[str, Any]
    telegram_bot_token: str
    telegram_api_url: str
    telegram_webhook_secret: str
    telegram_bot_username: str
    use_sandbox: bool
    log_level: str
    media_root: Path
    disconnect_grace: float
    lost_job_grace: float
    heartbeat_grace: float
    worker_stale_after: float
    process_lost_after: float
    trusted_proxy_count: int
    outbox_lease: float
    ready_outbox_max_age: float
    ready_sender_idle: float
    metrics_token: str
    failure_digest: tuple[float, float, int] = (60.0, 5.0, 3)  # window s, hold s, threshold (_failure_digest)


def _fail(name: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}: {problem}")


def _read(env: environ.Env, name: str, kind: str, default: Any) -> Any:
    try:
        return getattr(env, kind)(name, default=default)
    except (ValueError, TypeError) as exc:
        raise _fail(name, f"not a valid {kind} ({exc})") from exc


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def _bool(env: environ.Env, name: str, default: bool) -> bool:
    raw = env.str(name, default="true" if default else "false").strip().lower()
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise _fail(name, f"{raw!r} is not a boolean; use true/false, on/off, yes/no or 1/0")


def _url(name: str, value: str, schemes: set[str]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        allowed = ", ".join(sorted(schemes))
        raise _fail(name, f"{value!r} is not a URL with one of the schemes {allowed}")
    return value.rstrip("/")


# Every SQLite database (the default file and ``DATABASE_URL=sqlite:///…``): write-ahead logging so
# readers never wait for the writer, a busy timeout instead of an immediate "database is locked",
# and IMMEDIATE transactions, which take the write lock at BEGIN: a transaction that reads and then
# writes cannot fail to upgrade its lock halfway (SQLite answers that with "database is locked"
# at once, whatever the timeout).
SQLITE_OPTIONS: dict[str, Any] = {
    "timeout": 20,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
}
# PostgreSQL under ASGI: Django runs sync views in a thread pool, and a persistent connection
# (CONN_MAX_AGE) is one connection per thread, never closed while the thread lives. Django's
# psycopg pool shares a fixed number of connections between the threads instead (measured in
# benchmarks/README.md, "Notify API"). ``DATABASE_POOL_SIZE=0`` turns the pool off: a
# connection per request (CONN_MAX_AGE=0).
DEFAULT_POOL_SIZE = 10


SQLITE_ENGINE = "core.sqlite_backend"  # Django's, keeping the log open and reading any text (see its docstring)


def _sqlite(config: dict[str, Any]) -> dict[str, Any]:
    config["ENGINE"] = SQLITE_ENGINE
    config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
    return config


def _postgres(env: environ.Env, config: dict[str, Any]) -> dict[str, Any]:
    size = _read(env, "DATABASE_POOL_SIZE", "int", DEFAULT_POOL_SIZE)
    if size < 0:
        raise _fail("DATABASE_POOL_SIZE", f"must be 0 (no pool) or a number of connections, not {size}")
    config["CONN_MAX_AGE"] = 0
    if size:
        options = config.setdefault("OPTIONS", {})
        # min_size 1: an idle process holds one connection; max_idle returns the rest after a burst.
        options["pool"] = {"min_size": 1, "max_size": size, "max_idle": 60, "timeout": 30}
    return config


def _database(env: environ.Env, base_dir: Path) -> dict[str, Any]:
    raw = env.str("DATABASE_URL", default="")
    if not raw:
        return _sqlite({
            "NAME": base_dir / "db.sqlite3",
            # A file (not :memory:) so the test server's threads share it; one per test process.
            "TEST": {"NAME": base_dir / env.str("TEST_DB_NAME", default=f"test-db-{os.getpid()}.sqlite3")},
        })
    scheme = urlsplit(raw).scheme
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise _fail("DATABASE_URL", f"unsupported scheme {scheme!r}; use postgres://user@host:port/name")
    try:
        config = env.db_url_config(raw)
    except Exception as exc:  # django-environ raises several kinds on bad URLs
        raise _fail("DATABASE_URL", f"cannot parse {raw!r} ({exc})") from exc
    if config["ENGINE"].endswith("postgresql"):
        return _postgres(env, config)
    if not config.get("NAME") or config["NAME"] == ":memory:":
        raise _fail("DATABASE_URL", "a SQLite URL names a file, e.g. sqlite:////srv/statsbot/db.sqlite3")
    config.setdefault("TEST", {"NAME": f"{config['NAME']}-test-{os.getpid()}"})
    return _sqlite(config)


def _channel_layer(env: environ.Env) -> dict[str, Any]:
    raw = env.str("REDIS_URL", default="")
    if not raw:
        return {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    return redis_channel_layer(_url("REDIS_URL", raw, {"redis", "rediss"}))


# channels_redis waits for messages with a blocking BZPOPMIN of 5 s; redis-py 8 reads every reply
# within a 5 s socket timeout by default, so an idle consumer's wait raced the socket timeout and
# lost whenever the loop was a little late (TimeoutError in receive → the WebSocket closed;
# channels_redis issue 422). The read timeout must stay well above the blocking wait; keepalive
# and the pool's health check still notice a Redis that went away. redis-py 8 also caps a pool at
# 100 connections and fails the 101st at once ("Too many connections"): a burst of a few hundred
# workers' frames in one web process needs more.
# Not much higher: a consumer cancelled while it waits (a test's event loop closing, a shutdown)
# stays until its read times out; at 30 s every test that leaves a socket open hung its teardown.
REDIS_SOCKET_TIMEOUT = 10.0  # seconds; channels_redis's blocking wait is 5
REDIS_MAX_CONNECTIONS = 1000  # per web process and event loop; Redis allows 10,000 clients by default


def _driver_info() -> dict[str, Any]:
    """redis-py 7+ reads its own version from the installed package's metadata for every new
    connection it opens (~3.5 ms of CPU); given here, it is read once. A burst of reconnecting
    workers makes the pool open hundreds (benchmarks/README.md, "Worker WebSockets")."""
    from importlib import metadata

    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7 read it once, at import
        return {}
    return {"driver_info": DriverInfo(lib_version=metadata.version("redis"))}


def redis_channel_layer(url: str) -> dict[str, Any]:
    """The channels_redis layer for ``url`` with client options that keep idle receivers up."""
    host = {
        "address": url,
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "max_connections": REDIS_MAX_CONNECTIONS,
        **_driver_info(),
    }
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [host], "capacity": 1000, "expiry": 60},
    }


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise _fail(name, f"must be a positive number of seconds, not {value}")
    return value


def read_config(env: environ.Env, base_dir: Path) -> Config:
    debug = _bool(env, "DEBUG", True)
    secret_key = env.str("SECRET_KEY", default="") or (DEV_SECRET_KEY if debug else "")
    if not secret_key:
        raise _fail("SECRET_KEY", "must be set when DEBUG is off")
    if not debug and (secret_key == DEV_SECRET_KEY or len(secret_key) < 50 or len(set(secret_key)) < 5):
        raise _fail("SECRET_KEY", "use a random value of at least 50 characters in production")

    default_hosts = ["localhost", "127.0.0.1", "[::1]", "testserver"] if debug else []
    allowed_hosts = _read(env, "ALLOWED_HOSTS", "list", default_hosts)
    if not allowed_hosts:
        raise _fail("ALLOWED_HOSTS", "must list the host names this server answers to when DEBUG is off")

    public_url = _url("PUBLIC_URL", env.str("PUBLIC_URL", default="http://127.0.0.1:8000"), {"http", "https"})
    if not debug and not public_url.startswith("https://"):
        raise _fail("PUBLIC_URL", "must be an https:// URL when DEBUG is off (workers connect over wss://)")

    token = env.str("TELEGRAM_BOT_TOKEN", default="")
    if token and not BOT_TOKEN_RE.match(token):
        raise _fail("TELEGRAM_BOT_TOKEN", "does not look like a bot token from @BotFather (<digits>:<letters>)")
    api_url = env.str("TELEGRAM_API_URL", default="")
    if api_url:
        api_url = _url("TELEGRAM_API_URL", api_url, {"http", "https"})
    webhook_secret = env.str("TELEGRAM_WEBHOOK_SECRET", default="")
    if webhook_secret and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", webhook_secret):
        raise _fail("TELEGRAM_WEBHOOK_SECRET", "may only contain A-Z, a-z, 0-9, _ and - (1-256 characters)")

    username = env.str("TELEGRAM_BOT_USERNAME", default="" if token else "statsbot_sandbox_bot").lstrip("@")
    if username and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{3,31}", username):
        raise _fail("TELEGRAM_BOT_USERNAME", "is not a Telegram bot username (letters, digits, _)")

    log_level = env.str("LOG_LEVEL", default="INFO").upper()
    if log_level not in LOG_LEVELS:
        raise _fail("LOG_LEVEL", f"must be one of {', '.join(sorted(LOG_LEVELS))}")

    origin = urlsplit(public_url)
    return Config(
        debug=debug,
        secret_key=secret_key,
        allowed_hosts=allowed_hosts,
        public_url=public_url,
        csrf_trusted_origins=[f"{origin.scheme}://{origin.netloc}"],
        database=_database(env, base_dir),
        channel_layer=_channel_layer(env),
        telegram_bot_token=token or SANDBOX_BOT_TOKEN,
        telegram_api_url=api_url,
        telegram_webhook_secret=webhook_secret,
        telegram_bot_username=username,
        use_sandbox=not token,
        log_level=log_level,
        media_root=Path(env.str("MEDIA_ROOT", default=str(base_dir / "media"))),
        disconnect_grace=_positive(
            "WORKER_DISCONNECT_GRACE", _read(env, "WORKER_DISCONNECT_GRACE", "float", 30.0)
        ),
        lost_job_grace=_positive("JOB_LOST_GRACE", _read(env, "JOB_LOST_GRACE", "float", 600.0)),
        heartbeat_grace=_positive("HEARTBEAT_GRACE", _read(env, "HEARTBEAT_GRACE", "float", 60.0)),
        worker_stale_after=_positive("WORKER_STALE_AFTER", _read(env, "WORKER_STALE_AFTER", "float", 90.0)),
        process_lost_after=_positive(
            "PROCESS_LOST_AFTER", _read(env, "PROCESS_LOST_AFTER", "float", 24 * 3600.0)
        ),
        trusted_proxy_count=_proxy_count(env),
        outbox_lease=_lease(env),
        ready_outbox_max_age=_positive(
            "READY_OUTBOX_MAX_AGE", _read(env, "READY_OUTBOX_MAX_AGE", "float", 600.0)
        ),
        ready_sender_idle=_positive("READY_SENDER_IDLE", _read(env, "READY_SENDER_IDLE", "float", 120.0)),
        metrics_token=_metrics_token(env),
        failure_digest=_failure_digest(env),
    )


def _proxy_count(env: environ.Env) -> int:
    """How many reverse proxies sit in front of the web processes (each appends to
    X-Forwarded-For); 0 trusts no header and uses the peer address."""
    count = _read(env, "TRUSTED_PROXY_COUNT", "int", 0)
    if not 0 <= count <= 10:
        raise _fail("TRUSTED_PROXY_COUNT", f"must be a number of proxies between 0 and 10, not {count}")
    return count


def _lease(env: environ.Env) -> float:
    """Seconds an outbox sender's claim lives without renewal: how soon a crashed sender's chats resume."""
    lease = _read(env, "OUTBOX_LEASE_SECONDS", "float", 6.0)
    if not 1.0 <= lease <= 600.0:
        raise _fail("OUTBOX_LEASE_SECONDS", f"must be between 1 and 600 seconds, not {lease}")
    return lease


def _metrics_token(env: environ.Env) -> str:
    """The bearer token ``/metrics`` requires; empty: only loopback requests no proxy forwarded."""
    token = env.str("METRICS_TOKEN", default="")
    if token and (len(token) < 16 or not re.fullmatch(r"[\x21-\x7e]+", token)):
        raise _fail("METRICS_TOKEN", "use at least 16 printable characters without spaces")
    return token


MAX_FAILURE_DIGEST_HOLD = 30.0


def _failure_digest(env: environ.Env) -> tuple[float, float, int]:
    """(window, hold, threshold) of failure digests (``notifications.digests``): failures of one
    account within ``window`` seconds of the first form a group; the first alert waits ``hold``
    seconds for company; from ``threshold`` failures on, one digest message lists them.
    ``FAILURE_DIGEST_WINDOW=0`` turns digests off."""
    window = _read(env, "FAILURE_DIGEST_WINDOW", "float", 60.0)
    if not 0 <= window <= 3600:
        raise _fail("FAILURE_DIGEST_WINDOW", f"must be between 0 (off) and 3600 seconds, not {window}")
    hold = _read(env, "FAILURE_DIGEST_HOLD", "float", 5.0)
    # A held alert keeps the chat's order: the chat's later messages (job results, ⏹ Stop
    # confirmations, dashboard edits) wait behind it, so the hold stays short.
    if not 0 <= hold <= min(window, MAX_FAILURE_DIGEST_HOLD):
        raise _fail("FAILURE_DIGEST_HOLD", f"must be between 0 and {min(window, MAX_FAILURE_DIGEST_HOLD):g} seconds "
                    f"(the smaller of FAILURE_DIGEST_WINDOW and {MAX_FAILURE_DIGEST_HOLD:g}), not {hold}")
    threshold = _read(env, "FAILURE_DIGEST_THRESHOLD", "int", 3)
    if not 2 <= threshold <= 1000:
        raise _fail("FAILURE_DIGEST_THRESHOLD", f"must be a number of runs between 2 and 1000, not {threshold}")
    return window, hold, threshold
