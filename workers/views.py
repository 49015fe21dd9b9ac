"""``GET /worker``: the worker script, ready to pipe into python3."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from workers.script import load_script


@require_safe
def worker_script(request: HttpRequest) -> HttpResponse:
    script = load_script()
    response = HttpResponse(script.source, content_type="text/x-python; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="statsbot_worker.py"'
    response["Cache-Control"] = "public, max-age=300"
    response["X-StatsBot-Worker-Version"] = script.version
    return response
