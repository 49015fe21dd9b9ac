"""Every code block of the documentation marked ``<!-- test -->`` runs against a real server.

A marked block is a ``bash`` or ``python`` fence right after the marker line. It runs as a
reader would run it, against ``manage.py runbot``'s runtime (web server, bot and the Telegram
sandbox) with a sandbox user who sent ``/start``: ``http://127.0.0.1:8000`` in the block is
that server, ``exp_…`` and ``$EXPERIMENT_BOT_KEY`` the user's notification key. It must exit 0;
``<!-- test: expect "text" -->`` also waits until a bot message containing ``text`` reaches the
chat. The docs site itself is built by ``.ci/run`` (``mkdocs build --strict``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bot.conftest import driver, running_bot, user  # noqa: F401  (the same fixtures)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKER = re.compile(r'^<!-- test(?::\s*expect "(?P<expect>[^"]+)")? -->\s*$')
FENCE = re.compile(r"^```(?P<lang>\w+)\s*$")
DOCUMENTED_SERVER = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    lang: str
    code: str
    expect: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def examples() -> list[Example]:
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            marker = MARKER.match(line)
            if not marker:
                continue
            fence = FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
            assert fence, f"{path.name}:{index + 1}: a test marker must be followed by a code fence"
            end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith("```"))
            found.append(Example(str(path.relative_to(DOCS)), index + 2, fence["lang"],
                                 "\n".join(lines[index + 2:end]) + "\n", marker["expect"]))
    return found


EXAMPLES = examples()


def test_it_finds_the_examples_of_the_quick_start_and_notifications():
    pages = {example.page for example in EXAMPLES}
    assert {"quickstart.md", "notifications.md", "api.md"} <= pages
    assert all(example.lang in {"bash", "python"} for example in EXAMPLES)


@pytest.fixture
def api_key(running_bot, user) -> str:  # noqa: F811
    user.send("/start")
    welcome = user.wait_for_message("Welcome")
    return next(word for word in welcome["text"].split() if word.startswith("exp_"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_the_documented_example_works(example, running_bot, user, api_key, tmp_path):  # noqa: F811
    code = example.code.replace(DOCUMENTED_SERVER, running_bot.web_url).replace("exp_…", api_key)
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # the worker script saves a copy of itself under ~/.statsbot
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # the client's spool
        "EXPERIMENT_BOT_URL": running_bot.web_url,
        "EXPERIMENT_BOT_KEY": api_key,
        "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    command = [sys.executable, "-c", code] if example.lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{example.id} failed:\n{result.stdout}\n{result.stderr}"
    if example.expect:
        user.wait_for_message(example.expect, timeout=30)


def test_the_site_builds_without_warnings(tmp_path):
    """What .ci/run does, here too so a renamed page or a broken link fails the tests."""
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "/api/notify/batch" in api and "Idempotency" in api  # rendered from the OpenAPI document
    assert (tmp_path / "site" / "openapi.json").exists()
