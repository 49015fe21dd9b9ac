"""setup(): device-login pairing and pasted keys, saved to .env with mode 0600."""

from __future__ import annotations

import os
import stat

import experiment_bot
import pytest
from experiment_bot.errors import PairingError


def test_it_pairs_through_the_link_and_saves_the_key(fake, isolated, capsys):
    fake.add_pairing("Ab3dE9", "exp_PairedKey999", pending_polls=2)
    (isolated / ".env").write_text("OTHER=1\n# keep me\nEXPERIMENT_BOT_KEY=exp_old\n")
    key = experiment_bot.setup(server=fake.url)

    assert key == "exp_PairedKey999"
    out = capsys.readouterr().out
    assert (
        "Open this link on your phone and press Start: https://t.me/statsbot_test_bot?start=pair_Ab3dE9"
        in out
    )
    assert "exp_Pair… saved to" in out
    assert (isolated / ".env").read_text() == (
        f"OTHER=1\n# keep me\nEXPERIMENT_BOT_KEY=exp_PairedKey999\nEXPERIMENT_BOT_URL={fake.url}\n"
    )
    polls = [r for r in fake.attempts if r.path == "/api/register/Ab3dE9"]
    assert len(polls) == 3
    register = fake.attempts[0]
    assert register.path == "/api/register" and register.json["hostname"]
    assert "authorization" not in register.headers
    # The module-level bot picks the new key up at once.
    assert experiment_bot.bot.settings.api_key == "exp_PairedKey999"


def test_it_creates_dotenv_with_mode_0600(fake, isolated):
    fake.add_pairing("Code42", "exp_NewKey", pending_polls=0)
    experiment_bot.setup(server=fake.url)
    path = isolated / ".env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "EXPERIMENT_BOT_KEY=exp_NewKey\n" in path.read_text()


def test_it_fails_clearly_when_the_link_expires(fake, isolated):
    fake.add_pairing("Old123", "exp_x", expired=True)
    with pytest.raises(PairingError, match="expired"):
        experiment_bot.setup(server=fake.url)
    assert not (isolated / ".env").exists()


def test_it_cancels_cleanly_on_ctrl_c(fake, isolated, monkeypatch, capsys):
    from experiment_bot import pairing

    fake.add_pairing("Wait01", "exp_x", pending_polls=100)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pairing, "_poll", interrupted)
    assert experiment_bot.setup(server=fake.url) is None
    assert "cancelled" in capsys.readouterr().out
    assert not (isolated / ".env").exists()


def test_it_validates_and_saves_a_pasted_key(fake, isolated, capsys):
    fake.valid_keys = {"exp_Pasted12345"}
    assert experiment_bot.setup(server=fake.url, api_key="exp_Pasted12345") == "exp_Pasted12345"
    [request] = fake.attempts
    assert (request.method, request.path) == ("GET", "/api/validate")
    assert request.headers["authorization"] == "Bearer exp_Pasted12345"
    assert "EXPERIMENT_BOT_KEY=exp_Pasted12345" in (isolated / ".env").read_text()
    assert os.environ["EXPERIMENT_BOT_KEY"] == "exp_Pasted12345"
    assert "ann" in capsys.readouterr().out


def test_it_refuses_a_revoked_pasted_key(fake, isolated):
    fake.valid_keys = set()
    with pytest.raises(PairingError, match="rejected"):
        experiment_bot.setup(server=fake.url, api_key="exp_Revoked")
    assert not (isolated / ".env").exists()


def test_it_reports_an_unreachable_server(isolated):
    from experiment_bot_fake import free_port

    with pytest.raises(PairingError, match="cannot start pairing"):
        experiment_bot.setup(server=f"http://127.0.0.1:{free_port()}")


def test_it_says_in_one_line_how_to_pass_a_server_when_none_is_configured(isolated, capsys, monkeypatch):
    from experiment_bot import config
    from experiment_bot_fake import free_port

    monkeypatch.setattr(config, "DEFAULT_SERVER", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert experiment_bot.setup() is None
    assert experiment_bot.setup(api_key="exp_Pasted12345") is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    assert "no server is configured" in lines[0]
    assert 'experiment_bot.setup(server="https://' in lines[0] and "EXPERIMENT_BOT_URL=" in lines[0]
    assert not (isolated / ".env").exists()


def test_it_still_raises_for_an_unreachable_server_that_was_passed(isolated, monkeypatch):
    from experiment_bot_fake import free_port

    monkeypatch.setenv("EXPERIMENT_BOT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PairingError, match="cannot start pairing"):
        experiment_bot.setup()
