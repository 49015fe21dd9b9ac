"""A notification with a file or a photo arrives as ONE message, its text the caption; a text over
Telegram's 1,024-character caption limit is sent first and the file after it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.stories.test_notification_story import private_cache, script_env  # noqa: F401

pytestmark = pytest.mark.e2e

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
       b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")


@pytest.fixture
def api_key(running_bot, user) -> str:
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


def run(code: str, env: dict[str, str], cwd) -> None:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "dropped" not in result.stderr, result.stderr


def new_bot_messages(user, after: int) -> list[dict]:
    return [m for m in user.bot_messages() if m["message_id"] > after]


def test_it_sends_a_photo_or_a_file_and_its_text_as_one_message(running_bot, user, api_key, tmp_path):
    (tmp_path / "loss.png").write_bytes(PNG)
    (tmp_path / "run.log").write_text("epoch 1 ok\n")
    before = user.last_bot_message()["message_id"]
    run("""
        import experiment_bot
        bot = experiment_bot.ExperimentBot()
        bot.notify("Epoch 10 done: loss 0.12 — 日本語 ✓", file="loss.png")
        bot.notify("Logs of run 7", level="success", file="run.log")
        bot.close()
    """, script_env(running_bot, api_key), tmp_path)
    photo = user.wait_for_message("Epoch 10 done", timeout=30)
    document = user.wait_for_message("Logs of run 7", timeout=30)
    assert photo.get("photo") and "text" not in photo
    assert photo["caption"].startswith("ℹ️ Epoch 10 done: loss 0.12 — 日本語 ✓") and "loss.png" in photo["caption"]
    assert user.download(photo["photo"][-1]["file_id"]) == PNG
    assert document["document"]["file_name"] == "run.log" and document["caption"].startswith("✅ Logs of run 7")
    assert user.download(document["document"]["file_id"]) == b"epoch 1 ok\n"
    assert len(new_bot_messages(user, before)) == 2  # one message each, not a text and then a file


def test_it_sends_a_text_over_the_caption_limit_before_its_file(running_bot, user, api_key, tmp_path):
    (tmp_path / "run.log").write_text("epoch 1 ok\n")
    before = user.last_bot_message()["message_id"]
    run("""
        import experiment_bot
        bot = experiment_bot.ExperimentBot()
        bot.notify("long report " + "x" * 1100, file="run.log")
        bot.close()
    """, script_env(running_bot, api_key), tmp_path)
    text = user.wait_for_message("long report", timeout=30)
    assert "xxxx" in text["text"] and not text.get("document")
    document = user.wait_for_message(predicate=lambda m: bool(m.get("document")), timeout=30)
    assert document["document"]["file_name"] == "run.log" and len(document.get("caption", "")) <= 1024
    assert len(new_bot_messages(user, before)) == 2
