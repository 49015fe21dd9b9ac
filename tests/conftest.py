"""Fixtures shared by the whole suite."""

from __future__ import annotations

import itertools
import os

import pytest
from channels.layers import channel_layers
from django.test import Client

from accounts.models import Account

_user_ids = itertools.count(5_000_001)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow on this backend")


def slow_tests_run_here(config: pytest.Config) -> bool:
    """Slow fault and scale tests run once in CI: on the production backends (PostgreSQL + Redis)."""
    if config.getoption("--run-slow"):
        return True
    database = os.environ.get("DATABASE_URL", "")
    return database.startswith(("postgres://", "postgresql://")) and bool(os.environ.get("REDIS_URL"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) slow tests on the embedded defaults: they run in the PostgreSQL + Redis pass."""
    if slow_tests_run_here(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(autouse=True)
def _channel_layer_per_test() -> None:
    """Each test gets its own channel layer, as it gets its own event loops. channels_redis refuses
    a ``receive()`` from a second event loop while another loop's is pending, so a test that left one
    behind (a runtime that did not stop in time) would otherwise fail every later test that receives,
    and the first failure would drown among theirs. Channels resets it the same way when settings change."""
    channel_layers.backends = {}


@pytest.fixture
def make_account(db):
    def make(**fields) -> Account:
        user_id = fields.pop("telegram_user_id", next(_user_ids))
        account, _ = Account.from_telegram(
            user_id=user_id,
            chat_id=fields.pop("chat_id", user_id),
            username=fields.pop("username", f"user{user_id}"),
            first_name=fields.pop("first_name", "Ann"),
        )
        return account

    return make


@pytest.fixture
def account(make_account) -> Account:
    return make_account()


@pytest.fixture
def staff_client(db, django_user_model) -> Client:
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def page():
    """A Playwright page in headless Chromium (see ``tests.browser``)."""
    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()
