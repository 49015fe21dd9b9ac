"""Fixtures for the notify API: a key, and a JSON client that sends it."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.test import Client

from accounts.models import ApiKey


class ApiClient:
    """Django's test Client speaking JSON with a bearer key."""

    def __init__(self, raw_key: str | None = None) -> None:
        self.client = Client()
        self.raw_key = raw_key

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        if self.raw_key and "Authorization" not in headers:
            headers = {"Authorization": f"Bearer {self.raw_key}", **headers}
        return headers

    def post(self, path: str, body: Any = None, *, content_type: str = "application/json",
             headers: dict[str, str] | None = None, raw: bytes | str | None = None):
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(path, data=data, content_type=content_type, headers=self._headers(headers or {}))

    def multipart(self, path: str, fields: dict[str, Any], *, headers: dict[str, str] | None = None):
        return self.client.post(path, data=fields, headers=self._headers(headers or {}))

    def get(self, path: str, *, headers: dict[str, str] | None = None, **params: Any):
        return self.client.get(path, data=params, headers=self._headers(headers or {}))


@pytest.fixture
def issued_key(account) -> tuple[ApiKey, str]:
    return ApiKey.issue(account)


@pytest.fixture
def api(issued_key) -> ApiClient:
    return ApiClient(issued_key[1])


@pytest.fixture
def anonymous() -> ApiClient:
    return ApiClient()


def new_uuid() -> str:
    return str(uuid.uuid4())


def start_body(**overrides: Any) -> dict[str, Any]:
    return {"uuid": new_uuid(), "name": "train.py", "tags": ["lr=0.1"], "heartbeat_interval": 60, **overrides}


def wait_for_fresh_window(seconds: int = 10, need: float = 5.0) -> None:
    """Sleep into the start of a fixed window when less than ``need`` seconds of it remain."""
    left = seconds - time.time() % seconds
    if left < need:
        time.sleep(left + 0.05)
