"""Key, server and settings from arguments, environment, .env and the config file."""

from __future__ import annotations

import logging
import subprocess

import pytest
from experiment_bot import config
from experiment_bot.client import ExperimentBot
from experiment_bot.errors import ConfigurationError


def test_it_parses_dotenv_syntax():
    text = """
# a comment
EXPERIMENT_BOT_KEY=exp_plain
export EXPERIMENT_BOT_URL="https://bot.example.com"  # trailing comment
SINGLE='single quoted # not a comment'
SPACED = value with spaces   # comment
EMPTY=
not a line
"""
    assert config.parse_dotenv(text) == {
        "EXPERIMENT_BOT_KEY": "exp_plain",
        "EXPERIMENT_BOT_URL": "https://bot.example.com",
        "SINGLE": "single quoted # not a comment",
        "SPACED": "value with spaces",
        "EMPTY": "",
    }


def test_it_reads_the_key_from_dotenv_up_to_the_git_root(isolated):
    repo = isolated / "repo"
    deep = repo / "experiments" / "run1"
    deep.mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / ".env").write_text("EXPERIMENT_BOT_KEY=exp_fromroot\nEXPERIMENT_BOT_URL=http://root:1\n")
    (deep / ".env").write_text("EXPERIMENT_BOT_URL=http://near:2\n")
    (isolated / ".env").write_text("EXPERIMENT_BOT_KEY=exp_outside_the_repo\n")
    settings = config.resolve(cwd=deep, environ={})
    assert settings.api_key == "exp_fromroot"
    assert settings.api_key_source == ".env"
    assert settings.server == "http://near:2"  # nearer .env wins


def test_it_does_not_search_parents_outside_a_git_repository(isolated, tmp_path):
    (tmp_path / ".env").write_text("EXPERIMENT_BOT_KEY=exp_parent\n")
    assert config.resolve(environ={}).api_key is None


def test_it_prefers_arguments_then_environment_then_dotenv_then_file(isolated):
    (isolated / ".env").write_text("EXPERIMENT_BOT_KEY=exp_dotenv\n")
    (isolated / ".experiment_bot.toml").write_text('api_key = "exp_file"\nserver = "http://file:1"\n')
    env = {"EXPERIMENT_BOT_KEY": "exp_env"}
    assert config.resolve("exp_arg", environ=env).api_key == "exp_arg"
    assert config.resolve(environ=env).api_key == "exp_env"
    assert config.resolve(environ={}).api_key == "exp_dotenv"
    (isolated / ".env").unlink()
    settings = config.resolve(environ={})
    assert settings.api_key == "exp_file"
    assert settings.server == "http://file:1"
    assert config.resolve(environ={"EXPERIMENT_BOT_URL": "http://env:2/"}).server == "http://env:2"
    assert config.resolve(
        server="http://arg:3/api", environ={"EXPERIMENT_BOT_URL": "http://env:2"}
    ).server == ("http://arg:3")


def test_it_reads_the_seed_style_toml_config_with_interpolation(isolated):
    (isolated / ".experiment_bot.toml").write_text(
        """
api_key = "${EXPERIMENT_BOT_KEY}"

[settings]
auto_git_info = false
include_system_info = true
error_verbosity = "low"
batch_messages = false
heartbeat_interval = 15

[notifications]
on_start = false
on_error = true
on_success = true
progress_interval = "25%"
"""
    )
    (isolated / ".env").write_text("EXPERIMENT_BOT_KEY=exp_interpolated\n")
    settings = config.resolve(environ={})
    assert settings.api_key == "exp_interpolated"
    assert settings.auto_git_info is False
    assert settings.error_verbosity == "low"
    assert settings.batch_messages is False
    assert settings.heartbeat_interval == 15.0
    assert settings.on_start is False
    assert settings.progress_interval == "25%"
    assert settings.config_path == isolated / ".experiment_bot.toml"


def test_it_reads_the_seed_yaml_config(isolated):
    pytest.importorskip("yaml")
    (isolated / ".experiment_bot.yml").write_text(
        """
# .experiment_bot.yml
api_key: ${EXPERIMENT_BOT_KEY}
settings:
  auto_git_info: true
  include_system_info: true
  error_verbosity: medium
  batch_messages: true
  heartbeat_interval: 60
notifications:
  on_start: true
  on_error: true
  on_success: true
  progress_interval: 10%
"""
    )
    settings = config.resolve(environ={"EXPERIMENT_BOT_KEY": "exp_yaml"})
    assert settings.api_key == "exp_yaml"
    assert settings.heartbeat_interval == 60.0
    assert settings.progress_interval == "10%"


def test_it_warns_about_bad_values_and_keeps_defaults(isolated, caplog):
    (isolated / ".experiment_bot.toml").write_text(
        '[settings]\nheartbeat_interval = "often"\ncolour = "blue"\n[notifications]\nprogress_interval = "lots"\n'
    )
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        settings = config.resolve(environ={})
    assert settings.heartbeat_interval == 60.0
    assert settings.progress_interval == "10%"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "heartbeat_interval" in messages and "colour" in messages and "progress_interval" in messages


def test_it_takes_settings_from_environment_variables(isolated):
    settings = config.resolve(
        environ={
            "EXPERIMENT_BOT_HEARTBEAT_INTERVAL": "5",
            "EXPERIMENT_BOT_FLUSH_TIMEOUT": "2.5",
            "EXPERIMENT_BOT_DISABLED": "1",
        }
    )
    assert settings.heartbeat_interval == 5.0
    assert settings.flush_timeout == 2.5
    assert settings.disabled is True


def test_it_uses_an_explicit_config_path(isolated, tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('api_key = "exp_explicit"\n')
    assert config.resolve(config_path=path, environ={}).api_key == "exp_explicit"
    assert config.resolve(environ={"EXPERIMENT_BOT_CONFIG": str(path)}).api_key == "exp_explicit"


def test_it_raises_in_strict_mode_without_a_key(isolated):
    with pytest.raises(ConfigurationError, match="setup"):
        ExperimentBot(strict=True)


def test_it_lets_the_constructor_override_settings(isolated):
    bot = ExperimentBot("exp_x", "localhost:9", heartbeat_interval=5, flush_timeout=1)
    assert bot.settings.heartbeat_interval == 5
    assert bot.settings.flush_timeout == 1
    assert bot.server == "http://localhost:9"
    assert "exp_x" in repr(bot) and bot.enabled


def test_it_finds_the_git_root_for_config_search(isolated):
    subprocess.run(["git", "init", "-q", str(isolated)], check=True)
    (isolated / "sub").mkdir()
    (isolated / ".experiment_bot.toml").write_text('api_key = "exp_root"\n')
    assert config.resolve(cwd=isolated / "sub", environ={}).api_key == "exp_root"


@pytest.mark.parametrize("raw", ["inf", "nan", "-inf", "Infinity", "infs"])
def test_it_rejects_non_finite_seconds_from_the_environment(isolated, caplog, raw):
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        settings = config.resolve(
            environ={"EXPERIMENT_BOT_HEARTBEAT_INTERVAL": raw, "EXPERIMENT_BOT_FLUSH_TIMEOUT": raw}
        )
    assert settings.heartbeat_interval == 60.0
    assert settings.flush_timeout == 5.0
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "EXPERIMENT_BOT_HEARTBEAT_INTERVAL" in messages and "finite" in messages


def test_it_rejects_non_finite_seconds_from_the_config_file(isolated, caplog):
    (isolated / ".experiment_bot.toml").write_text(
        "[settings]\nheartbeat_interval = inf\nupdate_interval = nan\nflush_timeout = -inf\n"
    )
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        settings = config.resolve(environ={})
    assert settings.heartbeat_interval == 60.0
    assert settings.update_interval == 10.0
    assert settings.flush_timeout == 5.0
    messages = " ".join(r.getMessage() for r in caplog.records)
    for name in ("heartbeat_interval", "update_interval", "flush_timeout"):
        assert f"settings.{name}" in messages


def test_it_rejects_non_finite_seconds_given_as_arguments(isolated, caplog):
    with caplog.at_level(logging.WARNING, logger="experiment_bot"):
        bot = ExperimentBot(
            "exp_x", heartbeat_interval=float("inf"), update_interval=float("nan"), flush_timeout=-1
        )
    assert bot.settings.heartbeat_interval == 60.0
    assert bot.settings.update_interval == 10.0
    assert bot.settings.flush_timeout == 5.0
    assert "heartbeat_interval" in caplog.text and "using 60.0" in caplog.text
    with pytest.raises(ValueError, match="finite"):
        ExperimentBot("exp_x", heartbeat_interval=float("inf"), strict=True)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("statsbot.example.com", "https://statsbot.example.com"),
        ("statsbot.example.com:8443/api/", "https://statsbot.example.com:8443"),
        ("10.0.0.5:8000", "https://10.0.0.5:8000"),
        ("localhost:8000", "http://localhost:8000"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("::1", "http://[::1]"),
        ("http://statsbot.example.com", "http://statsbot.example.com"),  # an explicit scheme is kept
    ],
)
def test_it_defaults_to_https_except_on_this_machine(isolated, given, expected):
    assert config.normalize_server(given) == expected
    assert config.resolve(environ={"EXPERIMENT_BOT_URL": given}).server == expected
