"""/start, /help, /status, /revoke and the key buttons, through the sandbox."""

from __future__ import annotations

from accounts.models import Account, ApiKey


def test_it_welcomes_a_new_user_with_a_key_and_a_connect_button(running_bot, user):
    user.send("/start")
    reply = user.wait_for_message("Welcome to StatsBot, Ann!")
    text = reply["text"]
    assert "Local worker: ❌ Not connected" in text
    key = next(word for word in text.split() if word.startswith("exp_"))
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    assert running_bot.call(ApiKey.authenticate, key).account_id == account.pk
    labels = [b["text"] for row in reply["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["🔌 Connect Local Worker"]


def test_it_shows_only_the_key_prefix_to_a_returning_user(running_bot, user):
    user.send("/start")
    first = user.wait_for_message("Welcome")
    user.send("/start")
    again = user.wait_for_message("Hi again, Ann")
    key = next(word for word in first["text"].split() if word.startswith("exp_"))
    assert key not in again["text"] and key[:12] in again["text"]
    assert "is active" in again["text"]


def test_it_revokes_the_key_and_issues_a_new_one_on_request(running_bot, user):
    user.send("/start")
    first_key = next(w for w in user.wait_for_message("Welcome")["text"].split() if w.startswith("exp_"))
    user.send("/revoke")
    question = user.wait_for_message("Revoke key")
    assert running_bot.call(ApiKey.authenticate, first_key).is_active  # nothing happens before the answer
    user.tap("Yes, revoke it")
    user.wait_for_edit(question["message_id"], "is revoked")
    assert not running_bot.call(ApiKey.authenticate, first_key).is_active
    user.tap("🔑 Issue a new key")
    new_text = user.wait_for_edit(user.last_bot_message()["message_id"], "new key")["text"]
    new_key = next(w for w in new_text.split() if w.startswith("exp_"))
    assert running_bot.call(ApiKey.authenticate, new_key).is_active


def test_it_lists_the_commands(running_bot, user):
    user.send("/help")
    text = user.wait_for_message("/train")["text"]
    for command in ("/connect", "/predict", "/models", "/jobs", "/worker", "/status", "/revoke", "/cancel"):
        assert command in text


def test_it_reports_status_without_a_worker(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    user.send("/status")
    text = user.wait_for_message("Status")["text"]
    assert "Worker: ❌ not connected" in text and "Running processes" in text


def test_it_shows_a_connect_command_with_a_fresh_token(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    user.tap("🔌 Connect Local Worker")
    text = user.wait_for_message("Connect Local Worker")["text"]
    assert f"curl -sL {running_bot.web_url}/worker | python3 - --token=sbt_" in text
    assert f"irm {running_bot.web_url}/worker | python - --token=sbt_" in text
    assert "expires in 5 minutes" in text


def test_it_shows_running_processes_as_a_tree_in_status(running_bot, user):
    import uuid

    from notifications.services import start_process

    user.send("/start")
    user.wait_for_message("Welcome")
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)
    key = running_bot.call(lambda: account.active_key())
    parent, child = str(uuid.uuid4()), str(uuid.uuid4())
    running_bot.call(start_process, key, uuid=parent, name="sweep.py", tags=["grid"])
    running_bot.call(start_process, key, uuid=child, name="lr=0.1", parent_uuid=parent)
    user.send("/status")
    text = user.wait_for_message("Running processes")["text"]
    lines = text.split("Running processes")[1].strip().splitlines()
    assert "sweep.py" in lines[0] and "grid" in lines[0]
    assert lines[1].strip().startswith("↳") and "lr=0.1" in lines[1]


def test_it_asks_before_pairing_and_can_decline(running_bot, user):
    from accounts.models import PairingRequest

    user.send("/start")
    first_key = next(w for w in user.wait_for_message("Welcome")["text"].split() if w.startswith("exp_"))
    pairing, _ = running_bot.call(PairingRequest.start, hostname="stranger-box")
    user.send(f"/start pair_{pairing.code}")
    question = user.wait_for_message("Pair a machine with this chat?")
    assert "stranger-box" in question["text"]
    user.tap("Decline")
    user.wait_for_edit(question["message_id"], "nothing changed")
    assert running_bot.call(PairingRequest.objects.get, pk=pairing.pk).state == PairingRequest.State.PENDING
    assert running_bot.call(ApiKey.authenticate, first_key).is_active


def test_it_keeps_the_key_when_the_revoke_question_is_declined(running_bot, user):
    user.send("/start")
    key = next(w for w in user.wait_for_message("Welcome")["text"].split() if w.startswith("exp_"))
    user.send("/revoke")
    question = user.wait_for_message("Revoke key")
    assert key[:12] in question["text"]
    user.tap("Keep it")
    user.wait_for_edit(question["message_id"], "nothing changed")
    assert running_bot.call(ApiKey.authenticate, key).is_active


def _labels(message) -> list[str]:
    return [b["text"] for row in (message.get("reply_markup") or {}).get("inline_keyboard", []) for b in row]


def test_it_answers_free_text_outside_a_conversation_with_next_steps(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    user.send("hello, what can you do?")
    answer = user.wait_for_message("I only understand commands here")
    assert "/connect" in answer["text"]
    assert _labels(answer) == ["🔌 Connect Local Worker", "📖 All commands"]
    user.tap("📖 All commands")
    assert "/train" in user.wait_for_message("Experiment notifications")["text"]


def test_it_answers_an_unknown_command_with_next_steps(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    user.send("/trian now")
    answer = user.wait_for_message("I don't know")
    assert answer["text"].startswith("🤔 I don't know /trian.")
    user.tap("🔌 Connect Local Worker")
    assert "curl -sL" in user.wait_for_message("Run this in a terminal")["text"]
