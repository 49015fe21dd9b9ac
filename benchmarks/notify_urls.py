"""The site's URLs plus ``POST /bench/bare`` (for ``benchmarks/notify_api.py`` only)."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from statsbot_site.urls import urlpatterns as site_urlpatterns


@csrf_exempt
def bare(request: HttpRequest) -> JsonResponse:
    """What Django itself costs: read the JSON body, answer 202 with a small JSON body."""
    body = json.loads(request.body)
    return JsonResponse({"message_id": len(body), "status": "queued"}, status=202)


urlpatterns = [path("bench/bare", bare), *site_urlpatterns]
