"""What cannot be sent before exit is spooled on disk and sent later, once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_bot.spool import Spool, cache_root, spool_name
from experiment_bot_fake import TEST_KEY, Action, FakeServer, free_port, run_script, script_env

OTHER_KEY = "exp_OtherKey0987654321"

OFFLINE_SCRIPT = """
    import experiment_bot
    with experiment_bot.track("offline run"):
        for n in range(3):
            experiment_bot.notify(f"offline {n}")
"""


def spool_root(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "experiment_bot"  # XDG_CACHE_HOME is tmp_path/cache (conftest)


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted(path for path in spool_root(tmp_path).glob("*/*") if path.is_file())


def spooled_items(tmp_path: Path) -> list[dict]:
    return [item for path in spool_files(tmp_path) for item in json.loads(path.read_text())["items"]]


def offline_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "EXPERIMENT_BOT_URL": f"http://127.0.0.1:{port}",
        "EXPERIMENT_BOT_KEY": TEST_KEY,
        "EXPERIMENT_BOT_FLUSH_TIMEOUT": "0.5",
        **extra,
    }


def run_flush(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "experiment_bot", "flush", "--timeout", "10", *args],
        env=script_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_spools_what_it_could_not_send_before_exit(tmp_path):
    port = free_port()
    result = run_script(tmp_path, OFFLINE_SCRIPT, env=offline_env(port))
    assert result.returncode == 0, result.stderr

    assert "5 message(s) not delivered before exit" in result.stderr
    assert "0 sent, 5 spooled to" in result.stderr and "0 dropped" in result.stderr
    assert "python -m experiment_bot flush" in result.stderr
    [path] = spool_files(tmp_path)
    assert path.name.endswith(".spool.json")
    assert path.parent.name == spool_name(f"http://127.0.0.1:{port}", TEST_KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert TEST_KEY not in str(path) and TEST_KEY not in path.read_text()
    items = spooled_items(tmp_path)
    assert [item["path"] for item in items] == [
        "/api/processes/start",
        "/api/notify",
        "/api/notify",
        "/api/notify",
        "/api/processes/finish",
    ]
    assert [item["body"]["text"] for item in items[1:4]] == ["offline 0", "offline 1", "offline 2"]
    assert items[0]["body"]["metadata"]["python"]  # collected before it was written
    assert len({item["key"] for item in items}) == 5


def test_the_next_process_with_the_same_key_sends_the_spool_first(tmp_path):
    port = free_port()
    run_script(tmp_path, OFFLINE_SCRIPT, env=offline_env(port))
    keys = [item["key"] for item in spooled_items(tmp_path)]

    server = FakeServer(port).start()
    try:
        result = run_script(tmp_path, 'import experiment_bot\nexperiment_bot.notify("next run")\n',
                            env=offline_env(port))
        assert result.returncode == 0, result.stderr
        assert [r.path for r in server.accepted] == [
            "/api/processes/start",
            "/api/notify",
            "/api/notify",
            "/api/notify",
            "/api/processes/finish",
            "/api/notify",
        ]
        assert server.notify_texts() == ["offline 0", "offline 1", "offline 2", "next run"]
        assert [r.headers["idempotency-key"] for r in server.accepted][:5] == keys
        assert spool_files(tmp_path) == []
    finally:
        server.stop()


def test_python_m_experiment_bot_flush_sends_the_spool_once(tmp_path):
    port = free_port()
    run_script(tmp_path, OFFLINE_SCRIPT, env=offline_env(port))

    still_down = run_flush("--timeout", "0.5", env=offline_env(port))
    assert still_down.returncode == 1
    assert "0 of 5 spooled message(s) sent" in still_down.stdout and "5 still in" in still_down.stdout
    assert len(spooled_items(tmp_path)) == 5  # put back, same keys

    server = FakeServer(port).start()
    try:
        result = run_flush(env=offline_env(port))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "5 of 5 spooled message(s) sent" in result.stdout
        assert server.notify_texts() == ["offline 0", "offline 1", "offline 2"]
        assert len(server.started()) == 1 and len(server.finished()) == 1
        assert spool_files(tmp_path) == []

        again = run_flush(env=offline_env(port))
        assert again.returncode == 0
        assert "nothing spooled" in again.stdout
        assert server.notify_texts() == ["offline 0", "offline 1", "offline 2"]
    finally:
        server.stop()


def test_flush_needs_a_key(tmp_path):
    result = run_flush(env={"EXPERIMENT_BOT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "no API key" in result.stderr


def test_a_message_delivered_before_it_was_spooled_is_not_doubled(fake, make_bot):
    with fake.cond:
        fake.always = Action(500, process_first=True)  # stored, but every answer is lost
    bot = make_bot(fake)
    bot.notify("answer lost")
    fake.wait_for(lambda: len(fake.accepted) == 1)
    assert bot.close(timeout=0.3) is False
    assert bot.stats["spooled"] == 1 and bot.stats["dropped"] == 0

    with fake.cond:
        fake.always = None
    later = make_bot(fake)
    assert later._get_sender().load_spool() == 1
    assert later.flush(5)
    assert later.stats["sent"] == 1 and later.stats["from_spool"] == 1
    assert fake.notify_texts() == ["answer lost"]  # replayed by its key, not created again


def test_it_keeps_one_spool_per_key(tmp_path, make_bot):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for key in (TEST_KEY, OTHER_KEY):
        bot = make_bot(url, api_key=key)
        bot.notify(f"for {key[:8]}")
        bot.close(timeout=0.1)
    folders = sorted(path.name for path in spool_root(tmp_path).iterdir())
    assert folders == sorted([spool_name(url, TEST_KEY), spool_name(url, OTHER_KEY)])

    server = FakeServer(port).start()
    try:
        result = run_flush("--key", OTHER_KEY, "--server", url, env={})
        assert result.returncode == 0, result.stderr
        assert server.notify_texts() == [f"for {OTHER_KEY[:8]}"]
        assert "1 other spool(s)" in result.stdout
    finally:
        server.stop()


def test_it_takes_over_the_spool_of_a_process_that_died_while_sending(tmp_path, fake, make_bot):
    from experiment_bot.spool import _host

    spool = Spool(fake.url, TEST_KEY)
    item = {"path": "/api/notify", "kind": "notify", "priority": 1, "key": "k-dead",
            "body": {"text": "claimed by a dead process", "level": "info", "format": "text", "metadata": {}}}
    live_item = {**item, "key": "k-live", "body": {**item["body"], "text": "claimed by a live process"}}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for entry, pid in ((item, int(dead.stdout)), (live_item, live.pid)):
            path = spool.write([entry])
            os.rename(path, path.with_name(f"{path.name}.claimed-{_host()}-{pid}"))
        bot = make_bot(fake)
        assert bot._get_sender().load_spool() == 1
        assert bot.close(5)
        assert fake.notify_texts() == ["claimed by a dead process"]
        assert [path.name.rsplit("-", 1)[1] for path in spool_files(tmp_path)] == [str(live.pid)]
    finally:
        live.kill()
        live.wait()


def test_it_reads_a_large_spool_in_parts_and_keeps_the_order(tmp_path, fake, make_bot):
    spool = Spool(fake.url, TEST_KEY)
    for part in range(4):
        spool.write([
            {"path": "/api/notify", "kind": "notify", "priority": 1, "key": f"k{part}-{n}",
             "body": {"text": f"spooled {part * 3 + n}", "level": "info", "format": "text", "metadata": {}}}
            for n in range(3)
        ])
    bot = make_bot(fake, queue_size=4)  # reads about 2 messages' worth at a time
    bot.notify("new")
    assert bot.close(10)
    assert fake.notify_texts() == [f"spooled {n}" for n in range(12)] + ["new"]
    assert bot.stats["from_spool"] == 12
    assert spool_files(tmp_path) == []


def test_a_rate_limit_at_exit_spools_instead_of_dropping(fake, tmp_path):
    with fake.cond:
        fake.always = Action(429, headers={"Retry-After": "30"})
    code = """
        import experiment_bot
        for n in range(20):
            experiment_bot.notify(f"limited {n}")
    """
    result = run_script(tmp_path, code, env={**offline_env(fake.port), "EXPERIMENT_BOT_FLUSH_TIMEOUT": "1"})
    assert result.returncode == 0, result.stderr
    assert "0 sent, 20 spooled" in result.stderr and "0 dropped" in result.stderr
    assert [item["body"]["text"] for item in spooled_items(tmp_path)] == [f"limited {n}" for n in range(20)]


def test_it_sets_aside_a_spool_file_it_cannot_read(tmp_path, fake, make_bot):
    spool = Spool(fake.url, TEST_KEY)
    good = spool.write([{"path": "/api/notify", "kind": "notify", "priority": 1, "key": "k1",
                         "body": {"text": "readable", "metadata": {}}}])
    (good.parent / f"0000-1-bad{good.name[-11:]}").write_text("{not json")
    bot = make_bot(fake)
    assert bot._get_sender().load_spool() == 1
    assert bot.close(5)
    assert fake.notify_texts() == ["readable"]
    assert [path.suffix for path in spool_files(tmp_path)] == [".bad"]


def test_the_cache_folder_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "experiment_bot"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored, as the spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "experiment_bot"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "experiment_bot"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_it_makes_an_open_spool_folder_private_again(tmp_path, fake):
    spool = Spool(fake.url, TEST_KEY)
    spool.dir.mkdir(parents=True)
    spool.dir.chmod(0o777)
    assert spool.write([{"path": "/api/notify", "key": "k", "body": {"text": "x"}}]) is not None
    assert stat.S_IMODE(spool.dir.stat().st_mode) == 0o700
