"""Key hygiene from the chat, with real client scripts against the real server: a key rotated
in /status keeps working for its grace period while a running script goes on, is refused with
key_expired after it, and the running script continues with the new key the user put in .env;
an IP allowlist set in /status refuses the key from other addresses with 403 ip_not_allowed."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Account, ApiKey
from tests.stories.test_notification_story import (  # noqa: F401
    ROOT,
    api_key,
    private_cache,
    run_example,
    script_env,
)

pytestmark = pytest.mark.e2e

LONG_RUN = """
import sys
from experiment_bot import bot
with bot.track("rotation run"):
    bot.notify("before the rotation")
    assert bot.flush(30)
    print("sent the first message", flush=True)
    sys.stdin.readline()  # the test rotates the key meanwhile
    bot.notify("after the rotation")
assert bot.flush(30)
print("stats", bot.stats, flush=True)
"""


def finished(message) -> bool:
    text = message.get("text") or message.get("caption") or ""
    return "rotation run" in text and "finished in" in text


def button(message, starts: str) -> str:
    return next(b["text"] for row in message["reply_markup"]["inline_keyboard"] for b in row
                if b["text"].startswith(starts))


def the_key(running_bot, raw: str) -> ApiKey:
    return running_bot.call(ApiKey.authenticate, raw)


def test_it_rotates_a_key_from_the_chat_without_stopping_a_running_script(
    running_bot, user, api_key, tmp_path, private_cache  # noqa: F811
):
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text(f"EXPERIMENT_BOT_KEY={api_key}\n")
    env = script_env(running_bot, "unused")
    env.pop("EXPERIMENT_BOT_KEY")  # the key comes from .env, as setup() leaves it
    script = subprocess.Popen([sys.executable, "-c", LONG_RUN], cwd=project, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first_lines = []
        for line in script.stdout:
            first_lines.append(line)
            if "sent the first message" in line:
                break
        assert "sent the first message" in "".join(first_lines), first_lines
        user.wait_for_message("before the rotation", timeout=30)

        # /status → 🔄 Rotate → a grace period: the new key is shown once.
        user.send("/status")
        status = user.wait_for_message("Status")
        user.tap(button(status, "🔄 Rotate"), message=status)
        question = user.wait_for_edit(status["message_id"], "Rotate the key")
        assert [b["text"] for b in question["reply_markup"]["inline_keyboard"][0]] == [
            "⏳ 1 hour", "⏳ 24 hours (default)", "⏳ 7 days"]
        user.tap("⏳ 1 hour", message=question)
        rotated = user.wait_for_edit(status["message_id"], "New key for")
        new_key = next(word for word in rotated["text"].split() if word.startswith("exp_") and len(word) > 30)
        assert new_key != api_key and f"{api_key[:12]}… keeps working until" in rotated["text"]
        old = the_key(running_bot, api_key)
        assert old.replaced_by_id == the_key(running_bot, new_key).pk
        assert timedelta(minutes=59) < old.expires_at - timezone.now() <= timedelta(hours=1)

        # During the grace period both keys work; /status shows the old one as rotated.
        for key in (api_key, new_key):
            result = run_example("quick_notify.py", script_env(running_bot, key))
            assert result.returncode == 0 and "dropped" not in result.stderr, result.stderr
        user.send("/status")
        old_line = next(line for line in user.wait_for_message("Status")["text"].splitlines()
                        if old.prefix in line)
        assert "rotated, works until" in old_line

        # The grace period ends (the clock moves on): the old key is refused, naming its successor.
        running_bot.call(lambda: ApiKey.objects.filter(pk=old.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)))
        refused = key_state(running_bot, api_key)
        assert "key refused: HTTP 401 key_expired" in refused.stdout, refused.stdout + refused.stderr
        assert new_key[:12] in refused.stdout and new_key not in refused.stdout

        # The user pastes the new key into .env: the running script goes on with it.
        (project / ".env").write_text(f"EXPERIMENT_BOT_KEY={new_key}\n")
        output = script.communicate("go\n", timeout=60)[0]
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 0, output
    assert "continuing with the new key" in output and "'dropped': 0" in output, output
    assert new_key not in output and api_key not in output
    user.wait_for_message("after the rotation", timeout=30)
    user.wait_for_message(predicate=finished, timeout=30)  # the run started with the old key ends with the new
    assert the_key(running_bot, new_key).last_used_at is not None
    shown = key_state(running_bot, new_key)
    assert f"key {new_key[:12]}… is valid" in shown.stdout and "any address" in shown.stdout, shown.stdout


def key_state(running_bot, key: str) -> subprocess.CompletedProcess:
    """examples/key_rotation.py --steps 0: the key's state as the server sees it."""
    return subprocess.run([sys.executable, str(ROOT / "examples" / "key_rotation.py"), "--steps", "0"],
                          env=script_env(running_bot, key), capture_output=True, text=True, timeout=120)


def test_it_refuses_a_key_from_addresses_outside_its_allowlist(running_bot, user, api_key, private_cache):  # noqa: F811
    user.send("/status")
    status = user.wait_for_message("Status")
    user.tap(button(status, "🌐 IPs"), message=status)
    asked = user.wait_for_message("is accepted from")
    assert "any address" in asked["text"]

    user.send("10.9.0.0/16 not-an-ip")
    assert "'not-an-ip' is not an IP address" in user.wait_for_message("❌")["text"]
    user.send("10.9.0.0/16, 2001:db8::/32")  # the edit is still pending after a refusal
    user.wait_for_message("now accepted only from")
    key = the_key(running_bot, api_key)
    assert key.allowed_networks == ["10.9.0.0/16", "2001:db8::/32"]

    # The scripts run on this machine (127.0.0.1 as the server sees it): refused, saying why.
    refused = run_example("quick_notify.py", script_env(running_bot, api_key))
    assert "ip_not_allowed" in refused.stderr or "address" in refused.stderr, refused.stderr
    assert "127.0.0.1" in refused.stderr and "0 message(s) sent" in refused.stderr, refused.stderr
    state = key_state(running_bot, api_key)
    assert "key refused: HTTP 403 ip_not_allowed" in state.stdout and "127.0.0.1" in state.stdout, state.stdout
    user.send("/status")
    assert "only from 10.9.0.0/16, 2001:db8::/32" in user.wait_for_message("Status")["text"]

    # Allow this machine too: the same script is accepted.
    user.send("/status")
    status = user.wait_for_message("Status")
    user.tap(button(status, "🌐 IPs"), message=status)
    user.wait_for_message("is accepted from")
    user.send("10.9.0.0/16 127.0.0.1 ::1")
    user.wait_for_message("now accepted only from")
    accepted = run_example("quick_notify.py", script_env(running_bot, api_key))
    assert accepted.returncode == 0 and "dropped" not in accepted.stderr, accepted.stderr

    # And back to any address from the button.
    user.send("/status")
    status = user.wait_for_message("Status")
    user.tap(button(status, "🌐 IPs"), message=status)
    asked = user.wait_for_message("is accepted from")
    user.tap("🌍 Allow any address", message=asked)
    user.wait_for_edit(asked["message_id"], "any address again")
    assert the_key(running_bot, api_key).allowed_networks == []
    assert running_bot.call(lambda: Account.objects.get(telegram_user_id=user.user_id).active_keys())[0].pk == key.pk


def pair_here(running_bot, user, label: str, workdir) -> str:
    """The real experiment_bot.setup(label=…) in ``workdir``, approved in the chat; the key it saved."""
    env = script_env(running_bot, "unused")
    env.pop("EXPERIMENT_BOT_KEY")
    process = subprocess.Popen(
        [sys.executable, "-c", f"import experiment_bot; experiment_bot.setup(label={label!r})"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        link_line = next(line for line in process.stdout if "?start=pair_" in line)
        user.send(f"/start {link_line.split('?start=')[1].split()[0]}")
        question = user.wait_for_message("Pair a machine with this chat?")
        user.tap("✅ Approve", message=question)
        user.wait_for_edit(question["message_id"], "Paired!")
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    return (workdir / ".env").read_text().split("EXPERIMENT_BOT_KEY=")[1].split()[0]


def test_it_lets_a_running_script_switch_to_the_key_of_a_new_pairing(running_bot, user, tmp_path, private_cache):  # noqa: F811
    user.send("/start")
    user.wait_for_message("Welcome")
    project = tmp_path / "project"
    project.mkdir()
    first_key = pair_here(running_bot, user, "laptop", project)
    env = script_env(running_bot, "unused")
    env.pop("EXPERIMENT_BOT_KEY")
    script = subprocess.Popen([sys.executable, "-c", LONG_RUN], cwd=project, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in script.stdout:
            lines.append(line)
            if "sent the first message" in line:
                break
        assert "sent the first message" in "".join(lines), lines

        # The same machine is paired again (setup() rewrites .env): the old key gets a short grace period.
        second_key = pair_here(running_bot, user, "laptop", project)
        old = the_key(running_bot, first_key)
        assert second_key != first_key and old.replaced_by_id == the_key(running_bot, second_key).pk
        assert old.is_active and old.expires_at is not None
        running_bot.call(lambda: ApiKey.objects.filter(pk=old.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)))  # the grace period is over
        output = script.communicate("go\n", timeout=60)[0]
    finally:
        if script.poll() is None:
            script.kill()
    assert script.returncode == 0 and "continuing with the new key" in output and "'dropped': 0" in output, output
    user.wait_for_message("after the rotation", timeout=30)
    user.wait_for_message(predicate=finished, timeout=30)
    assert the_key(running_bot, second_key).last_used_at is not None
