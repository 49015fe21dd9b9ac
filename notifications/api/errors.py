"""The one error shape of the API: ``{"error": {"code", "message"}}`` with a matching status."""

from __future__ import annotations

from django.http import JsonResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return json_response(self.status, {"error": {"code": self.code, "message": self.message}}, self.headers)


class InvalidInput(ApiError):
    """A 400 naming the field and what it must be."""

    def __init__(self, message: str, code: str = "invalid_input") -> None:
        super().__init__(400, code, message)


def json_response(status: int, body: dict, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse(body, status=status, json_dumps_params={"ensure_ascii": False})
    response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
