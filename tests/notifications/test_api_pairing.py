"""Device pairing of experiment_bot.setup(): register, confirm in the bot, poll for the key."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import override_settings
from django.utils import timezone

from accounts.models import REPAIR_GRACE, ApiKey, PairingRequest
from accounts.pairing import PairingRefusal, confirm_pairing, expire_pairings
from core.models import OutboxMessage
from notifications import ratelimit
from tests.notifications.conftest import ApiClient

pytestmark = pytest.mark.django_db


def register(client: ApiClient, **body):
    response = client.post("/api/register", body or {"hostname": "gpu-box"})
    assert response.status_code == 201, response.content
    return response.json()


def poll(client: ApiClient, started: dict):
    parts = urlsplit(started["poll_url"])
    return client.get(parts.path, **{k: v[0] for k, v in parse_qs(parts.query).items()})


def test_it_pairs_a_machine_end_to_end(anonymous, account):
    started = register(anonymous, hostname="gpu-box", label="laptop")
    code = started["code"]
    assert started["link"] == f"https://t.me/statsbot_sandbox_bot?start=pair_{code}"
    assert started["poll_url"].startswith(f"http://testserver/api/register/{code}?secret=pair_")
    assert (started["expires_in"], started["interval"]) == (600, 2)
    pairing = PairingRequest.objects.get(code=code)
    assert (pairing.hostname, pairing.label, pairing.state) == ("gpu-box", "laptop", "pending")

    assert poll(anonymous, started).json() == {"status": "pending"}

    key = confirm_pairing(account, f"pair_{code}")
    assert isinstance(key, ApiKey) and key.account == account and key.is_active
    assert not OutboxMessage.objects.exists()  # the bot answers the user itself

    confirmed = poll(anonymous, started)
    assert confirmed.status_code == 200
    body = confirmed.json()
    assert body["status"] == "confirmed" and body["api_key"].startswith("exp_")
    assert ApiKey.authenticate(body["api_key"]) == key

    again = poll(anonymous, started)
    assert again.status_code == 404  # handed over once

    validated = ApiClient(body["api_key"]).get("/api/validate")
    assert validated.status_code == 200
    assert validated.json()["account"]["telegram_user_id"] == account.telegram_user_id


def test_it_never_stores_the_key_or_the_secret(anonymous, account):
    started = register(anonymous)
    secret = parse_qs(urlsplit(started["poll_url"]).query)["secret"][0]
    confirm_pairing(account, started["code"])
    api_key = poll(anonymous, started).json()["api_key"]
    row = PairingRequest.objects.filter(code=started["code"]).values().get()
    assert not any(secret in str(v) or api_key in str(v) for v in row.values())


@override_settings(TELEGRAM_BOT_USERNAME="my_exp_bot")
def test_it_links_to_the_configured_bot(anonymous):
    assert register(anonymous)["link"].startswith("https://t.me/my_exp_bot?start=pair_")


def test_it_refuses_a_wrong_secret_with_403_and_unknown_codes_with_404(anonymous):
    started = register(anonymous)
    response = anonymous.get(f"/api/register/{started['code']}", secret="pair_wrong")
    assert response.status_code == 403 and response.json()["error"]["code"] == "wrong_secret"
    assert anonymous.get("/api/register/nosuchcode", secret="pair_x").status_code == 404
    missing = anonymous.get(f"/api/register/{started['code']}")
    assert missing.status_code == 400 and "'secret'" in missing.json()["error"]["message"]


def test_it_answers_an_expired_pairing_with_410(anonymous, account):
    started = register(anonymous)
    PairingRequest.objects.filter(code=started["code"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = poll(anonymous, started)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "expired"
    assert confirm_pairing(account, started["code"]) is PairingRefusal.EXPIRED
    assert not ApiKey.objects.exists()


def test_it_refuses_unknown_and_used_codes_in_the_bot(anonymous, make_account):
    assert confirm_pairing(make_account(), "pair_nothing") is PairingRefusal.UNKNOWN
    assert confirm_pairing(make_account(), "") is PairingRefusal.UNKNOWN
    started = register(anonymous)
    first, second = make_account(), make_account()
    key = confirm_pairing(first, started["code"])
    assert confirm_pairing(first, started["code"]) == key  # a second tap by the same user
    refusal = confirm_pairing(second, started["code"])
    assert refusal is PairingRefusal.ALREADY_USED and refusal == "already_used"
    assert str(refusal) == refusal.message and "already used" in f"{refusal}"
    assert not second.api_keys.exists()


def test_it_adds_a_key_per_machine_and_replaces_only_the_same_machines(anonymous, account):
    chat_key, _ = ApiKey.issue(account)
    laptop = confirm_pairing(account, register(anonymous, hostname="laptop")["code"])
    gpu = confirm_pairing(account, register(anonymous, hostname="gpu-box")["code"])
    assert (laptop.name, gpu.name) == ("laptop", "gpu-box")
    assert {k.pk for k in account.active_keys()} == {chat_key.pk, laptop.pk, gpu.pk}
    laptop.set_allowed_networks(["10.0.0.0/8"])
    laptop_again = confirm_pairing(account, register(anonymous, hostname="laptop")["code"])
    laptop.refresh_from_db()
    # Paired again: the old key works a few minutes more (running scripts switch over), then expires.
    assert laptop.replaced_by == laptop_again and laptop.expires_at is not None
    assert laptop.expires_at - timezone.now() <= REPAIR_GRACE
    assert laptop_again.allowed_networks == ["10.0.0.0/8"] and laptop_again.expires_at is None
    with mock.patch("django.utils.timezone.now", return_value=timezone.now() + REPAIR_GRACE):
        laptop.refresh_from_db()
        assert not laptop.is_active and laptop_again.is_active
        assert {k.pk for k in account.active_keys()} == {chat_key.pk, gpu.pk, laptop_again.pk}


def test_it_names_a_paired_key_after_its_label_when_given(anonymous, account):
    key = confirm_pairing(account, register(anonymous, hostname="box", label="cluster node 3")["code"])
    assert key.name == "cluster node 3"


def test_it_expires_stale_pairings(anonymous, account):
    fresh, stale, confirmed = register(anonymous), register(anonymous), register(anonymous)
    confirm_pairing(account, confirmed["code"])
    past = timezone.now() - timedelta(minutes=1)
    PairingRequest.objects.filter(code__in=[stale["code"], confirmed["code"]]).update(expires_at=past)
    assert expire_pairings() == 2
    states = dict(PairingRequest.objects.values_list("code", "state"))
    assert states == {fresh["code"]: "pending", stale["code"]: "expired", confirmed["code"]: "expired"}
    assert expire_pairings() == 0


def test_it_limits_pending_pairings_per_address(anonymous):
    for _ in range(ratelimit.PAIRINGS_PER_IP):
        register(anonymous)
    response = anonymous.post("/api/register", {"hostname": "again"})
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    other = ApiClient()
    other.client.defaults["REMOTE_ADDR"] = "10.9.8.7"
    assert other.post("/api/register", {}).status_code == 201


def test_it_accepts_an_empty_register_body_and_refuses_bad_fields(anonymous):
    response = anonymous.post("/api/register", raw="")
    assert response.status_code == 201
    response = anonymous.post("/api/register", {"hostname": 7})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'hostname' must be a string"
