"""The operator's metrics page in the admin, and ``/metrics`` for Prometheus."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ops.metrics import report
from ops.prometheus import registry


def metrics_page(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Success metrics",
        "report": report(),
    }
    return TemplateResponse(request, "ops/metrics.html", context)


def _loopback(request: HttpRequest) -> bool:
    """A request from this machine that no proxy forwarded (a proxy on this host looks like loopback)."""
    if any(request.META.get(h) for h in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _allowed(request: HttpRequest) -> bool:
    token: str = settings.METRICS_TOKEN
    if not token:
        return _loopback(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. ``METRICS_TOKEN`` set: a bearer token is required; unset: loopback only."""
    if not _allowed(request):
        response = HttpResponse("metrics: forbidden (see METRICS_TOKEN)\n", status=403, content_type="text/plain")
        if settings.METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            response.status_code = 401
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
