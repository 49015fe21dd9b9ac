"""Counts notify API responses by endpoint and status code, in this process (``ops.counters``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from ops import counters

API_PREFIX = "/api/"


def _count(request: HttpRequest, response: HttpResponseBase) -> None:
    if not request.path.startswith(API_PREFIX):
        return
    match = getattr(request, "resolver_match", None)
    endpoint = match.url_name if match is not None and match.url_name else "unknown"
    counters.increment("api_requests", endpoint, str(response.status_code))


class ApiStatusMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        response = self.get_response(request)
        _count(request, response)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        response = await get_response(request)
        _count(request, response)
        return response
