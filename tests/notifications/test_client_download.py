"""The experiment_bot package served by the server, ready for ``pip install <url>``."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import pytest


def test_it_serves_the_client_as_a_source_archive(client):
    response = client.get("/client/experiment-bot.zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert "experiment-bot/pyproject.toml" in names
    assert "experiment-bot/experiment_bot/__init__.py" in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.e2e
def test_it_builds_a_wheel_pip_can_install(client, tmp_path):
    archive = tmp_path / "experiment-bot.zip"
    archive.write_bytes(client.get("/client/experiment-bot.zip").content)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(archive)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next(tmp_path.glob("experiment_bot-*.whl"))
    assert "experiment_bot/client.py" in zipfile.ZipFile(wheel).namelist()
