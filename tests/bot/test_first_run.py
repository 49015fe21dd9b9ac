"""What a new user meets first: runbot with a busy port, and the web app's root page."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from core.site import publish_bot
from tests.bot.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_runbot(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PYTHONUNBUFFERED": "1"}
    for name in ("REDIS_URL", "TELEGRAM_BOT_TOKEN", "TELEGRAM_API_URL", "PUBLIC_URL", "PORT"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "manage.py", "runbot", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.parametrize(("which", "option"), [("web", "--port"), ("sandbox", "--sandbox-port")])
def test_it_stops_with_one_line_when_a_port_is_busy(tmp_path, busy_port, which, option):
    ports = {"web": free_port(), "sandbox": free_port(), which: busy_port}
    done = run_runbot(tmp_path, "--port", str(ports["web"]), "--sandbox-port", str(ports["sandbox"]))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{busy_port}" in lines[0] and "already in use" in lines[0] and option in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert "sandbox" not in done.stdout.lower()  # nothing started before the check
    assert not (tmp_path / "db.sqlite3").exists()  # not even the migrations


def test_it_serves_a_home_page_instead_of_a_404(client, db):
    page = client.get("/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "StatsBot server" in text and 'href="/admin/"' in text and 'href="/worker"' in text
    assert 'href="/docs/worker-protocol"' in text and "has not started yet" in text


def test_it_links_the_sandbox_web_chat_when_the_bot_published_it(client, db):
    publish_bot(username="statsbot_sandbox_bot", deep_link_base="http://127.0.0.1:8081/")
    text = client.get("/").content.decode()
    assert 'href="http://127.0.0.1:8081/"' in text and "sandbox web chat" in text


def test_it_links_the_bot_on_telegram_otherwise(client, db, settings):
    settings.TELEGRAM_USE_SANDBOX = False
    publish_bot(username="my_stats_bot")
    assert 'href="https://t.me/my_stats_bot"' in client.get("/").content.decode()


def test_it_serves_the_docs_it_links_and_nothing_else(client, db):
    doc = client.get("/docs/worker-protocol")
    assert doc.status_code == 200 and doc["Content-Type"].startswith("text/markdown")
    assert b"list_models" in b"".join(doc.streaming_content)
    assert client.get("/docs/settings").status_code == 404
    assert client.get("/docs/..%2Fmanage.py").status_code == 404


def test_it_shows_the_running_sandbox_chat_on_the_printed_web_url(running_bot):
    with urllib.request.urlopen(f"{running_bot.web_url}/", timeout=30) as response:
        text = response.read().decode()
    assert f'href="{running_bot.sandbox_url}/"' in text
