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
                 "WORKER_DISCONNECT_GRACE", "JOB_LOST_GRACE", "HEARTBEAT_GRACE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return read_config(environ.Env(), BASE)


def test_it_runs_on_embedded_defaults(monkeypatch):
    cfg = config(monkeypatch)
    assert cfg.debug is True
    assert cfg.database["ENGINE"] == "django.db.backends.sqlite3"
    assert cfg.database["NAME"] == BASE / "db.sqlite3"
    assert cfg.channel_layer == {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    assert cfg.use_sandbox is True
    assert cfg.telegram_bot_token == SANDBOX_BOT_TOKEN
    assert cfg.public_url == "http://127.0.0.1:8000"


def test_it_switches_to_postgres_and_redis(monkeypatch):
    cfg = config(monkeypatch, DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
                 REDIS_URL="redis://127.0.0.1:6379/0")
    assert cfg.database["ENGINE"] == "django.db.backends.postgresql"
    assert cfg.database["NAME"] == "test"
    assert cfg.database["HOST"] == "127.0.0.1"
    assert cfg.channel_layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert cfg.channel_layer["CONFIG"]["hosts"] == ["redis://127.0.0.1:6379/0"]


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
