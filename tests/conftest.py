"""Fixtures shared by the whole suite."""

from __future__ import annotations

import itertools

import pytest
from django.test import Client

from accounts.models import Account

_user_ids = itertools.count(5_000_001)


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
