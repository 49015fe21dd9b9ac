"""``GET /client/experiment-bot.zip``: the experiment_bot package as a source archive pip installs.

So a user of any StatsBot server can run ``pip install https://HOST/client/experiment-bot.zip``
without the repository. Built from ``client/`` in memory, once per change of its files.
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from core.site import public_url

CLIENT_DIR = Path(settings.BASE_DIR) / "client"
SKIP_PARTS = {"__pycache__", "build", "dist"}
ARCHIVE_ROOT = "experiment-bot"


def _client_files() -> list[Path]:
    return sorted(
        path for path in CLIENT_DIR.rglob("*")
        if path.is_file()
        and not SKIP_PARTS.intersection(path.relative_to(CLIENT_DIR).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
        and path.suffix not in {".pyc", ".pyo"}
    )


@lru_cache(maxsize=2)
def _archive(signature: tuple[tuple[str, int], ...]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, _ in signature:
            archive.write(CLIENT_DIR / relative, f"{ARCHIVE_ROOT}/{relative}")
    return buffer.getvalue()


def client_archive() -> bytes:
    files = _client_files()
    return _archive(tuple((str(p.relative_to(CLIENT_DIR)), p.stat().st_mtime_ns) for p in files))


def client_install_url() -> str:
    return f"{public_url()}/client/experiment-bot.zip"


@require_GET
def client_zip(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(client_archive(), content_type="application/zip")
    response["Content-Disposition"] = 'attachment; filename="experiment-bot.zip"'
    response["Cache-Control"] = "public, max-age=300"
    return response
