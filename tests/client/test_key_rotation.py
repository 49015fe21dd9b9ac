"""A running script whose key is refused (rotated and expired, revoked) re-reads its key from
.env and goes on with the new one; an IP allowlist refusal stops sending with one clear error."""

from __future__ import annotations

import logging
from pathlib import Path

OLD = "exp_OldKey0000000000000000000"
NEW = "exp_NewKey1111111111111111111"


def keys_used(fake) -> list[str]:
    return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in fake.attempts]


def test_it_continues_with_the_new_key_from_env_once_the_old_one_expires(fake, make_bot, isolated: Path, caplog):
    (isolated / ".env").write_text(f"EXPERIMENT_BOT_KEY={OLD}\n")
    bot = make_bot(fake, api_key=None)
    bot.notify("before the rotation")
    assert bot.flush(5)

    fake.expired_keys.add(OLD)  # the grace period ended
    (isolated / ".env").write_text(f"# rotated\nEXPERIMENT_BOT_KEY={NEW}\n")  # the user pasted the new key
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        bot.notify("after the rotation")
        assert bot.flush(5)
        bot.notify("and after that")
        assert bot.flush(5)

    assert fake.notify_texts() == ["before the rotation", "after the rotation", "and after that"]
    assert keys_used(fake) == [OLD, OLD, NEW, NEW]
    assert bot.stats["dropped"] == 0
    warning = next(r.getMessage() for r in caplog.records if "new key" in r.getMessage())
    assert OLD[:8] in warning and NEW[:8] in warning and ".env" in warning and "key_expired" in warning
    assert NEW not in caplog.text and OLD not in caplog.text  # prefixes only
    assert bot.validate()["key_prefix"] == NEW[:8]  # synchronous calls follow the switch too


def test_it_stops_with_a_clear_error_when_env_still_holds_the_expired_key(fake, make_bot, isolated: Path, caplog):
    (isolated / ".env").write_text(f"EXPERIMENT_BOT_KEY={OLD}\n")
    fake.expired_keys.add(OLD)
    bot = make_bot(fake, api_key=None)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        for index in range(3):
            bot.notify(f"message {index}")
        bot.flush(5)
    assert len(fake.attempts) == 1 and bot.stats["dropped"] == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "expired" in errors[0] and "EXPERIMENT_BOT_KEY" in errors[0]


def test_it_tries_a_new_key_once_and_never_swaps_a_key_given_in_code(fake, make_bot, isolated: Path):
    (isolated / ".env").write_text(f"EXPERIMENT_BOT_KEY={NEW}\n")
    fake.expired_keys.update({OLD, NEW})
    in_code = make_bot(fake, api_key=OLD)
    in_code.notify("refused")
    in_code.flush(5)
    assert keys_used(fake) == [OLD]

    (isolated / ".env").write_text(f"EXPERIMENT_BOT_KEY={OLD}\n")
    from_env = make_bot(fake, api_key=None)
    (isolated / ".env").write_text(f"EXPERIMENT_BOT_KEY={NEW}\n")  # a new key that is refused too
    from_env.notify("refused too")
    from_env.flush(5)
    assert keys_used(fake) == [OLD, OLD, NEW]  # no loop between the two
    assert from_env.stats["dropped"] == 1 and fake.notify_texts() == []


def test_it_stops_sending_when_the_key_refuses_this_address(fake, make_bot, caplog):
    fake.address_refused_keys.add("exp_TestKey1234567890")
    bot = make_bot(fake)
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        for index in range(4):
            bot.notify(f"message {index}")
        bot.flush(5)
        bot.notify("later")
        bot.flush(5)
    assert len(fake.attempts) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "address" in errors[0] and "127.0.0.1" in errors[0]
    assert bot.stats["pending"] == 0
