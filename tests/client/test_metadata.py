"""Automatic metadata: python, script, git, host, environment, packages, system."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
from experiment_bot import metadata


def git(repo, *args):
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hi')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    monkeypatch.setattr(sys, "argv", [str(path / "train.py")])
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # as if run as a script
    monkeypatch.setattr(metadata, "_cache", {})
    return path


def test_it_reads_the_git_commit_and_dirty_flag(repo):
    commit = git(repo, "rev-parse", "HEAD")
    assert metadata.git_info(str(repo)) == {"commit": commit, "branch": "main", "dirty": False}
    (repo / "train.py").write_text("print('changed')\n")
    assert metadata.git_info(str(repo))["dirty"] is True


def test_it_omits_git_outside_a_repository(tmp_path):
    assert metadata.git_info(str(tmp_path)) is None


def test_it_omits_git_when_git_is_missing(repo, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert metadata.git_info(str(repo)) is None


def test_it_collects_the_start_metadata(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", types.SimpleNamespace(__version__="9.9.9"))
    monkeypatch.setenv("VIRTUAL_ENV", "/home/ann/.venvs/research")
    data = metadata.collect()
    assert data["python"].endswith(".".join(map(str, sys.version_info[:3])))
    assert data["script"] == "train.py"
    assert data["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert data["host"]
    assert data["env"] == "research"
    assert data["packages"]["numpy"] == "9.9.9"
    assert "torch" not in data["packages"] or "torch" in sys.modules
    assert data["system"]["cpu_count"] >= 1
    assert data["system"]["memory_total_mb"] > 0
    assert "platform" in data


def test_it_never_imports_packages_to_read_versions(monkeypatch):
    for name in metadata.KEY_PACKAGES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert metadata.package_versions() == {}
    assert not any(name in sys.modules for name in metadata.KEY_PACKAGES)


def test_it_respects_the_git_and_system_settings(repo):
    data = metadata.collect(include_git=False, include_system=False)
    assert "git" not in data and "system" not in data and "platform" not in data
    assert data["host"]


def test_it_measures_peak_memory():
    assert metadata.peak_memory_mb() > 1


def test_it_sends_metadata_with_the_process_start(fake, make_bot, repo):
    bot = make_bot(fake)
    with bot.track("with metadata"):
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert start["metadata"]["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert start["metadata"]["script"] == "train.py"
    assert start["metadata"]["pid"] > 0


def test_it_sends_notification_preferences_only_when_changed(fake, make_bot, isolated):
    (isolated / ".experiment_bot.toml").write_text("[notifications]\non_start = false\n")
    bot = make_bot(fake)
    with bot.track("quiet start"):
        pass
    assert bot.flush(5)
    [start] = fake.started()
    assert start["metadata"]["notify_prefs"] == {"on_start": False, "on_success": True, "on_error": True}
