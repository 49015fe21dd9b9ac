import importlib.metadata
from pathlib import Path

import environ
import pytest
from django.core.exceptions import ImproperlyConfigured

from statsbot_site.config import SANDBOX_BOT_TOKEN, read_config

BASE = Path("/srv/statsbot")
PROD = {
    "DEBUG": "off",
    "SECRET_KEY": "tR8-kq2Vx0zLw5mN9pQ3sD7fG1hJ4kL6zX8cV2bN5mQ0wE3rT6yU9iO1pA4sD7fG",
    "ALLOWED_HOSTS": "bot.example.com",
    "PUBLIC_URL": "https://bot.example.com",
}


def config(monkeypatch, **variables):
    for name in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "PUBLIC_URL",
                 "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL", "TELEGRAM_WEBHOOK_SECRET", "TELEGRAM_BOT_USERNAME", "LOG_LEVEL",
                 "WORKER_DISCONNECT_GRACE", "JOB_LOST_GRACE", "HEARTBEAT_GRACE", "PROCESS_LOST_AFTER", "DATABASE_POOL_SIZE",
                 "TRUSTED_PROXY_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return read_config(environ.Env(), BASE)


def test_it_runs_on_embedded_defaults(monkeypatch):
    cfg = config(monkeypatch)
    assert cfg.debug is True
    assert cfg.database["ENGINE"] == "core.sqlite_backend"  # Django's: the log kept open, any text read
    assert cfg.database["NAME"] == BASE / "db.sqlite3"
    assert cfg.channel_layer == {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    assert cfg.use_sandbox is True
    assert cfg.telegram_bot_token == SANDBOX_BOT_TOKEN
    assert cfg.public_url == "http://127.0.0.1:8000"


def test_it_reads_when_a_stalled_process_is_marked_lost(monkeypatch):
    assert config(monkeypatch).process_lost_after == 24 * 3600
    assert config(monkeypatch, PROCESS_LOST_AFTER="7200").process_lost_after == 7200


def test_it_switches_to_postgres_and_redis(monkeypatch):
    cfg = config(monkeypatch, DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
                 REDIS_URL="redis://127.0.0.1:6379/0")
    assert cfg.database["ENGINE"] == "django.db.backends.postgresql"
    assert cfg.database["NAME"] == "test"
    assert cfg.database["HOST"] == "127.0.0.1"
    assert cfg.channel_layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    [host] = cfg.channel_layer["CONFIG"]["hosts"]
    assert host["address"] == "redis://127.0.0.1:6379/0"
    # above channels_redis's 5 s blocking receive (redis-py 8 defaults to 5 s: channels_redis issue 422)
    assert host["socket_timeout"] >= 5 * 2
    # redis-py's version read once, not from package metadata for every new connection
    assert host["driver_info"].lib_version == importlib.metadata.version("redis")


def test_it_reads_a_production_configuration(monkeypatch):
    cfg = config(monkeypatch, **PROD, TELEGRAM_BOT_TOKEN="123456789:AAbbCCddEEffGGhh_ii-jj",
                 TELEGRAM_WEBHOOK_SECRET="s3cret_value")
    assert cfg.debug is False
    assert cfg.allowed_hosts == ["bot.example.com"]
    assert cfg.csrf_trusted_origins == ["https://bot.example.com"]
    assert cfg.use_sandbox is False


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"DEBUG": "perhaps"}, "DEBUG"),
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"PUBLIC_URL": "bot.example.com"}, "PUBLIC_URL"),
        ({"TELEGRAM_BOT_TOKEN": "not-a-token"}, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_API_URL": "ftp://x"}, "TELEGRAM_API_URL"),
        ({"TELEGRAM_WEBHOOK_SECRET": "has spaces!"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"JOB_LOST_GRACE": "soon"}, "JOB_LOST_GRACE"),
        ({"WORKER_DISCONNECT_GRACE": "-5"}, "WORKER_DISCONNECT_GRACE"),
        ({"PROCESS_LOST_AFTER": "0"}, "PROCESS_LOST_AFTER"),
        ({"PROCESS_LOST_AFTER": "a day"}, "PROCESS_LOST_AFTER"),
        ({"DATABASE_URL": "postgres://h/db", "DATABASE_POOL_SIZE": "-1"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_URL": "postgres://h/db", "DATABASE_POOL_SIZE": "many"}, "DATABASE_POOL_SIZE"),
        ({"DATABASE_URL": "sqlite://"}, "DATABASE_URL"),
        ({"TRUSTED_PROXY_COUNT": "-1"}, "TRUSTED_PROXY_COUNT"),
        ({"TRUSTED_PROXY_COUNT": "one"}, "TRUSTED_PROXY_COUNT"),
        ({"FAILURE_DIGEST_WINDOW": "-1"}, "FAILURE_DIGEST_WINDOW"),
        ({"FAILURE_DIGEST_HOLD": "61"}, "FAILURE_DIGEST_HOLD"),  # longer than the window
        ({"FAILURE_DIGEST_WINDOW": "3600", "FAILURE_DIGEST_HOLD": "600"}, "FAILURE_DIGEST_HOLD"),  # chats wait behind it
        ({"FAILURE_DIGEST_THRESHOLD": "1"}, "FAILURE_DIGEST_THRESHOLD"),
        ({**PROD, "SECRET_KEY": ""}, "SECRET_KEY"),
        ({**PROD, "SECRET_KEY": "short"}, "SECRET_KEY"),
        ({**PROD, "ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({**PROD, "PUBLIC_URL": "http://bot.example.com"}, "PUBLIC_URL"),
    ],
)
def test_it_fails_loudly_naming_the_bad_variable(monkeypatch, variables, named):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        config(monkeypatch, **variables)
    assert str(excinfo.value).startswith(f"{named}:")


def test_it_passes_the_deploy_checks_in_production(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PROD, TELEGRAM_BOT_TOKEN="123456789:AAbbCCddEEffGGhh_ii-jj")
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


WAL = "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL"


@pytest.mark.parametrize("url", ["", "sqlite:////srv/statsbot/db.sqlite3", "sqlite:///relative.db"])
def test_every_sqlite_configuration_gets_wal_a_busy_timeout_and_immediate_transactions(monkeypatch, url):
    cfg = config(monkeypatch, **({"DATABASE_URL": url} if url else {}))
    assert cfg.database["ENGINE"] == "core.sqlite_backend"  # Django's: the log kept open, any text read
    assert cfg.database["OPTIONS"] == {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": WAL}
    assert cfg.database["TEST"]["NAME"]  # a file: the live-server tests share it between threads


def test_a_sqlite_url_may_override_an_option(monkeypatch):
    cfg = config(monkeypatch, DATABASE_URL="sqlite:////tmp/x.db?timeout=60")
    assert cfg.database["OPTIONS"] == {"timeout": 60, "transaction_mode": "IMMEDIATE", "init_command": WAL}


def test_postgres_shares_a_connection_pool_between_the_asgi_threads(monkeypatch):
    cfg = config(monkeypatch, DATABASE_URL="postgres://postgres@127.0.0.1:5432/test")
    assert cfg.database["CONN_MAX_AGE"] == 0  # a persistent connection would be one per thread
    assert cfg.database["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 10, "max_idle": 60, "timeout": 30}
    sized = config(monkeypatch, DATABASE_URL="postgres://h/db", DATABASE_POOL_SIZE="25").database
    assert sized["OPTIONS"]["pool"]["max_size"] == 25
    unpooled = config(monkeypatch, DATABASE_URL="postgres://h/db", DATABASE_POOL_SIZE="0").database
    assert "pool" not in unpooled.get("OPTIONS", {}) and unpooled["CONN_MAX_AGE"] == 0


def test_it_reads_the_number_of_trusted_proxies(monkeypatch):
    assert config(monkeypatch).trusted_proxy_count == 0
    assert config(monkeypatch, TRUSTED_PROXY_COUNT="2").trusted_proxy_count == 2


def test_a_sqlite_url_really_opens_in_wal_mode(tmp_path):
    """What a process started with ``DATABASE_URL=sqlite:///…`` (a documented form) gets."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    # After the connection closes (as after every request) the log is still there: the process
    # keeps it open (core.sqlite), so closing does not checkpoint it with several fsyncs.
    code = ("import os; from django.db import connection as c; cur = c.cursor(); "
            "mode = cur.execute('PRAGMA journal_mode').fetchone()[0]; "
            "timeout = cur.execute('PRAGMA busy_timeout').fetchone()[0]; "
            "cur.execute('CREATE TABLE t (x)'); c.close(); "
            "print(mode, timeout, c.transaction_mode, os.path.exists(c.settings_dict['NAME'] + '-wal'))")
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=Path(__file__).resolve().parents[2],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["wal", "20000", "IMMEDIATE", "True"]
