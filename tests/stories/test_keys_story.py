"""One notification key per machine: two machines paired with setup(), both keep reporting;
/status lists the keys by machine with their last use; each is revoked or renamed from the chat."""

from __future__ import annotations

import subprocess
import sys

import pytest

from accounts.models import Account, ApiKey
from tests.stories.test_notification_story import private_cache, run_example, script_env  # noqa: F401

pytestmark = pytest.mark.e2e


def pair_machine(running_bot, user, label: str, workdir) -> str:
    """Run the real experiment_bot.setup(label=…) and approve its link in the chat; returns the key."""
    env = script_env(running_bot, "unused")
    env.pop("EXPERIMENT_BOT_KEY")
    workdir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", f"import experiment_bot; experiment_bot.setup(label={label!r})"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        link_line = next(line for line in process.stdout if "?start=pair_" in line)
        user.send(f"/start {link_line.split('?start=')[1].split()[0]}")
        question = user.wait_for_message("Pair a machine with this chat?")
        assert "your other machines' keys keep working" in question["text"]
        assert "will be revoked" not in question["text"]
        user.tap("✅ Approve", message=question)
        user.wait_for_edit(question["message_id"], "Paired!")
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    return (workdir / ".env").read_text().split("EXPERIMENT_BOT_KEY=")[1].split()[0]


def active_names(running_bot, user) -> set[str]:
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    return {key.name for key in running_bot.call(account.active_keys)}


def test_it_keeps_a_key_per_machine_and_revokes_or_renames_each_from_the_chat(running_bot, user, tmp_path):
    user.send("/start")
    user.wait_for_message("Welcome")
    laptop_key = pair_machine(running_bot, user, "laptop", tmp_path / "laptop")
    gpu_key = pair_machine(running_bot, user, "gpu-box", tmp_path / "gpu")
    assert laptop_key != gpu_key

    # Both machines report: pairing the second did not revoke the first.
    for key in (laptop_key, gpu_key):
        result = run_example("quick_notify.py", script_env(running_bot, key))
        assert result.returncode == 0, result.stderr
    assert {"laptop", "gpu-box"} <= active_names(running_bot, user)

    user.send("/status")
    status = user.wait_for_message("Status")
    text = status["text"]
    laptop_line = next(line for line in text.splitlines() if "laptop" in line)
    gpu_line = next(line for line in text.splitlines() if "gpu-box" in line)
    assert laptop_key[:12] in laptop_line and "last used" in laptop_line and "never" not in laptop_line
    assert gpu_key[:12] in gpu_line and "last used" in gpu_line

    # Revoke the laptop's key (after a confirmation): the GPU box keeps reporting.
    user.tap("🔒 Revoke laptop", message=status)
    question = user.wait_for_edit(status["message_id"], "Revoke the key of laptop")
    user.tap("Yes, revoke it", message=question)
    user.wait_for_edit(status["message_id"], "is revoked")
    assert not running_bot.call(ApiKey.authenticate, laptop_key).is_active
    assert running_bot.call(ApiKey.authenticate, gpu_key).is_active
    refused = run_example("quick_notify.py", script_env(running_bot, laptop_key))
    assert "0 message(s) sent" in refused.stderr and "revoked" in refused.stderr
    accepted = run_example("quick_notify.py", script_env(running_bot, gpu_key))
    assert accepted.returncode == 0 and "dropped" not in accepted.stderr

    # Rename the GPU box's key: the next text is its name, even in the middle of nothing else.
    user.send("/status")
    status = user.wait_for_message("Status")
    assert "laptop" not in status["text"]
    user.tap("✏️ Rename gpu-box", message=status)
    user.wait_for_message("Send the new name")
    user.send("a100 <node 7>")
    user.wait_for_message("Renamed")
    assert running_bot.call(ApiKey.authenticate, gpu_key).name == "a100 <node 7>"
    user.send("/status")
    assert "a100 <node 7>" in user.wait_for_message("Status")["text"]


def test_it_drops_a_pending_rename_when_a_command_comes_instead(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    user.send("/status")
    status = user.wait_for_message("Status")
    button = next(b["text"] for row in status["reply_markup"]["inline_keyboard"] for b in row
                  if b["text"].startswith("✏️ Rename"))
    user.tap(button, message=status)
    user.wait_for_message("Send the new name")
    user.send("/help")
    user.wait_for_message("/train")
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    assert [key.name for key in running_bot.call(account.active_keys)] == [""]
