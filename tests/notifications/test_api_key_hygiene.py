"""Key hygiene: rotation with a grace period (the old key answers key_expired after it) and a
per-key IP allowlist (other addresses answered 403 ip_not_allowed), through the API and the admin."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey
from accounts.networks import MAX_NETWORKS, InvalidNetworks, address_allowed, parse_networks
from core.models import OutboxMessage
from core.state_machine import InvalidTransition

pytestmark = pytest.mark.django_db


def call(raw: str, path: str = "/api/validate", *, address: str = "127.0.0.1", forwarded: str = "",
         body: dict | None = None):
    """One request with key ``raw`` arriving from ``address`` (the peer address the server sees)."""
    headers = {"Authorization": f"Bearer {raw}"}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    client = Client(REMOTE_ADDR=address)
    if body is not None:
        return client.post(path, data=body, content_type="application/json", headers=headers)
    return client.get(path, headers=headers)


def later(delta: timedelta):
    """The clock ``delta`` from now (the only thing mocked: time passing)."""
    return mock.patch("django.utils.timezone.now", return_value=timezone.now() + delta)


def test_it_keeps_a_rotated_key_working_during_its_grace_period_and_refuses_it_after(account):
    old, old_raw = ApiKey.issue(account, name="gpu-box")
    new, new_raw = old.rotate(timedelta(hours=1))

    assert new.name == "gpu-box" and new.pk != old.pk
    during = call(old_raw)
    assert during.status_code == 200
    assert during.json()["replaced_by_prefix"] == new.prefix
    assert during.json()["expires_at"] is not None
    assert call(new_raw).json()["expires_at"] is None
    assert call(old_raw, "/api/notify", body={"text": "still here"}).status_code == 202

    with later(timedelta(hours=1, seconds=1)):
        refused = call(old_raw, "/api/notify", body={"text": "too late"})
        assert refused.status_code == 401
        error = refused.json()["error"]
        assert error["code"] == "key_expired"
        assert new.prefix in error["message"] and "EXPERIMENT_BOT_KEY" in error["message"]
        assert "Bearer" in refused["WWW-Authenticate"]
        assert old_raw not in error["message"] and new_raw not in error["message"]
        assert call(new_raw, "/api/notify", body={"text": "new key"}).status_code == 202
        assert [key.pk for key in account.active_keys()] == [new.pk]
    texts = [row.payload.get("text", "") for row in OutboxMessage.objects.all()]
    assert any("still here" in text for text in texts) and not any("too late" in text for text in texts)


def test_it_rotates_a_key_once_and_never_a_revoked_one(account):
    key, _ = ApiKey.issue(account)
    successor, _ = key.rotate()
    assert key.expires_at is not None
    assert timedelta(hours=23, minutes=59) < key.expires_at - timezone.now() <= timedelta(hours=24)
    with pytest.raises(InvalidTransition):
        ApiKey.objects.get(pk=key.pk).rotate()
    successor.revoke()
    with pytest.raises(InvalidTransition):
        successor.rotate()
    with pytest.raises(ValueError):
        ApiKey.issue(account)[0].rotate(timedelta(days=31))
    assert ApiKey.objects.filter(account=account).count() == 3


def test_it_hands_the_allowlist_on_to_the_rotated_key(account):
    key, _ = ApiKey.issue(account, name="laptop")
    key.set_allowed_networks(["10.0.0.0/8"])
    successor, raw = key.rotate()
    assert ApiKey.objects.get(pk=successor.pk).allowed_networks == ["10.0.0.0/8"]
    assert call(raw, address="192.0.2.1").status_code == 403


def test_it_refuses_addresses_outside_the_allowlist_with_a_clear_403(account):
    key, raw = ApiKey.issue(account)
    assert key.set_allowed_networks(["10.0.0.0/8", "2001:db8::/32", "203.0.113.7"]) == [
        "10.0.0.0/8", "2001:db8::/32", "203.0.113.7/32"]

    assert call(raw, address="10.20.30.40").status_code == 200
    assert call(raw, address="2001:db8::5").status_code == 200
    assert call(raw, address="203.0.113.7").json()["allowed_networks"] == key.allowed_networks

    refused = call(raw, "/api/notify", address="192.0.2.1", body={"text": "from outside"})
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "ip_not_allowed"
    assert "192.0.2.1" in error["message"] and "/status" in error["message"]
    assert "10.0.0.0/8" not in error["message"]  # a stolen key does not learn where it would work
    assert not OutboxMessage.objects.exists()
    assert call(raw, address="203.0.113.8").status_code == 403

    key.set_allowed_networks([])
    assert call(raw, address="192.0.2.1").status_code == 200


def test_it_throttles_a_key_tried_from_outside_its_allowlist_like_an_unknown_key(account):
    from notifications.ratelimit import BAD_KEYS_PER_ADDRESS

    key, raw = ApiKey.issue(account)
    key.set_allowed_networks(["10.0.0.0/8"])
    answers = [call(raw, address="198.51.100.9").status_code for _ in range(BAD_KEYS_PER_ADDRESS.limit + 2)]
    assert answers[:BAD_KEYS_PER_ADDRESS.limit - 1] == [403] * (BAD_KEYS_PER_ADDRESS.limit - 1)
    assert answers[-2:] == [429, 429]  # a leaked key cannot be tried from anywhere without limit
    assert call(raw, address="10.1.2.3").status_code == 200  # the allowed network is not punished


def test_it_believes_x_forwarded_for_only_behind_a_configured_proxy(account, settings):
    key, raw = ApiKey.issue(account)
    key.set_allowed_networks(["10.0.0.0/8"])
    settings.TRUSTED_PROXY_COUNT = 0
    spoofed = call(raw, address="192.0.2.1", forwarded="10.0.0.1")
    assert spoofed.status_code == 403 and "192.0.2.1" in spoofed.json()["error"]["message"]
    settings.TRUSTED_PROXY_COUNT = 1  # one proxy: the last entry is what it received
    assert call(raw, address="172.16.0.2", forwarded="192.0.2.9, 10.0.0.1").status_code == 200
    assert call(raw, address="172.16.0.2", forwarded="10.0.0.1, 192.0.2.9").status_code == 403


def test_it_parses_networks_strictly_and_names_the_bad_entry():
    assert parse_networks([" 10.1.2.3/16 ", "10.1.0.0/16", "::1", "2001:DB8::/32"]) == [
        "10.1.0.0/16", "::1/128", "2001:db8::/32"]
    for bad, named in (["10.0.0.0/33"], "10.0.0.0/33"), (["example.com"], "example.com"), ([7], "7"):
        with pytest.raises(InvalidNetworks, match=named):
            parse_networks(bad)
    with pytest.raises(InvalidNetworks, match=f"at most {MAX_NETWORKS}"):
        parse_networks([f"10.0.{i}.0/24" for i in range(MAX_NETWORKS + 1)])
    with pytest.raises(InvalidNetworks, match="too long"):
        parse_networks(["1" * 200])
    assert address_allowed("::ffff:10.0.0.1", ["10.0.0.0/8"])
    assert not address_allowed("0.0.0.0", ["10.0.0.0/8"])
    assert address_allowed("0.0.0.0", [])


def test_it_edits_the_allowlist_and_rotates_keys_in_the_admin(account, staff_client):
    key, raw = ApiKey.issue(account, name="node-7")
    url = f"/admin/accounts/apikey/{key.pk}/change/"
    page = staff_client.get(url)
    assert page.status_code == 200 and raw not in page.content.decode()

    refused = staff_client.post(url, {"allowed_networks": "10.0.0.0/8\nnot-an-ip"})
    assert refused.status_code == 200 and "not-an-ip" in refused.content.decode()
    assert ApiKey.objects.get(pk=key.pk).allowed_networks == []

    saved = staff_client.post(url, {"allowed_networks": "10.0.0.0/8, 2001:db8::/32"})
    assert saved.status_code == 302
    assert ApiKey.objects.get(pk=key.pk).allowed_networks == ["10.0.0.0/8", "2001:db8::/32"]

    rotated = staff_client.post("/admin/accounts/apikey/", {"action": "rotate_keys", "_selected_action": [key.pk]},
                                follow=True)
    key.refresh_from_db()
    assert key.replaced_by is not None and key.expires_at is not None
    shown = rotated.content.decode()
    assert "exp_" in shown and key.replaced_by.prefix in shown
    assert key.replaced_by.allowed_networks == ["10.0.0.0/8", "2001:db8::/32"]
