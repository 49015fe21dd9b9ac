"""The notify API views (see docs/notify-api.md). Each parses its input, calls a service, answers."""

from __future__ import annotations

import logging

from django.urls import reverse
from django.utils.http import urlencode

from accounts import pairing as pairings
from accounts.models import PairingRequest
from core.secrets import matches
from core.site import start_link
from core.state_machine import InvalidTransition
from notifications import ratelimit, services
from notifications.api import idempotency
from notifications.api.errors import ApiError, InvalidInput
from notifications.api.http import Answer, Call, endpoint, valid_text
from notifications.api.validation import (
    BatchItem,
    parse_finish,
    parse_heartbeat,
    parse_notify,
    parse_notify_batch,
    parse_register,
    parse_start,
)
from notifications.schema import openapi_schema

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 2


# ---------------------------------------------------------------------------------- pairing


@endpoint("POST", name="register", auth=False, body="json")
def register(call: Call) -> Answer:
    data = parse_register(call.data)
    ip = call.address  # behind proxies: settings.TRUSTED_PROXY_COUNT (core.client_address)
    decision = ratelimit.check_pairing_ip(ip)
    if not decision.allowed:
        raise ApiError(429, "rate_limited",
                       f"too many pairings started from this address; retry in {decision.retry_after}s",
                       {"Retry-After": str(decision.retry_after)})
    pairing, poll_secret = pairings.start_pairing(hostname=data.hostname, label=data.label)
    ratelimit.record_pairing_ip(pairing, ip)
    poll_path = reverse("notifications:register-poll", kwargs={"code": pairing.code})
    return 201, {
        "code": pairing.code,
        "link": start_link(f"pair_{pairing.code}"),
        "poll_url": call.request.build_absolute_uri(f"{poll_path}?{urlencode({'secret': poll_secret})}"),
        "expires_in": max(0, round((pairing.expires_at - pairing.created_at).total_seconds())),
        "interval": POLL_INTERVAL_S,
    }


@endpoint("GET", name="register/poll", auth=False)
def register_poll(call: Call, code: str) -> Answer:
    secret = valid_text(call.request.GET.get("secret", ""))
    if not secret:
        raise InvalidInput("the 'secret' query parameter from poll_url is required")
    pairing = PairingRequest.objects.filter(code=code).first()
    if pairing is None or pairing.state == PairingRequest.State.CLAIMED:
        raise ApiError(404, "not_found", "no such pairing (it may have been used already); run setup() again")
    if not matches(secret, pairing.poll_secret_hash):
        raise ApiError(403, "wrong_secret", "this secret does not belong to this pairing")
    if pairing.is_expired:
        raise ApiError(410, "expired", "this pairing expired before it was confirmed; run setup() again")
    if pairing.state == PairingRequest.State.PENDING:
        return 200, {"status": "pending"}
    try:
        api_key = pairing.claim(secret)
    except InvalidTransition:  # claimed by a concurrent poll, or expired meanwhile
        raise ApiError(404, "not_found", "this pairing was already used; run setup() again") from None
    logger.info("pairing #%s claimed", pairing.pk)
    return 200, {"status": "confirmed", "api_key": api_key}


# ---------------------------------------------------------------------------------- with a key


@endpoint("GET", name="validate")
def validate(call: Call) -> Answer:
    key = call.api_key
    account = key.account
    return 200, {
        "valid": True,
        "key_prefix": key.prefix,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "replaced_by_prefix": key.replaced_by.prefix if key.replaced_by_id and key.replaced_by else None,
        "allowed_networks": list(key.allowed_networks or []),
        "account": {
            "telegram_user_id": account.telegram_user_id,
            "username": account.username,
            "first_name": account.first_name,
        },
    }


@endpoint("POST", name="notify", body="json_or_file", budget=True)
def notify(call: Call) -> Answer:
    data = parse_notify(call.data, has_file=call.upload is not None)
    if data.group and call.upload is not None:
        raise InvalidInput("a message with a 'group' is edited in place and cannot carry a file")
    call.charge(messages=1)
    attachment = None
    if call.upload is not None:
        attachment = services.attachment_for(call.upload.name or "file", call.upload.read(),
                                             call.upload.content_type or "")
    message = services.notify(call.api_key, data.text, data.level, data.format, data.process_id, data.metadata,
                              attachment, group=data.group)
    return 202, {"message_id": message.pk, "status": "queued"}


@endpoint("POST", name="notify/batch", body="json", budget=True)
def notify_batch(call: Call) -> Answer:
    """Up to 100 notifications in one request, all queued in one transaction; each item is
    answered as ``POST /api/notify`` would answer it alone (its own idempotency key included)."""
    items = parse_notify_batch(call.data)
    results = [_queue_batch_item(call, item) for item in items]
    # Charged after the items' idempotency claims, as the single form is (one lock order), and
    # only for messages queued now: over budget, the whole batch rolls back and is answered 429.
    call.charge(messages=sum(1 for r in results if r["status"] == 202 and "replayed" not in r))
    queued = sum(1 for result in results if result["status"] == 202)
    return 200, {"results": results, "queued": queued, "rejected": len(results) - queued}


def _queue_batch_item(call: Call, item: BatchItem) -> dict:
    def produce() -> Answer:
        data = item.message
        assert data is not None  # an item without a message carries the error it is answered with
        message = services.notify(call.api_key, data.text, data.level, data.format, data.process_id,
                                  data.metadata, group=data.group)
        return 202, {"message_id": message.pk, "status": "queued"}

    replayed = False
    try:
        if item.error is not None:
            raise item.error
        if item.idempotency_key is None:
            status, body = produce()
        else:  # the single form's namespace: a message first sent alone is replayed here, and back
            status, body, replayed = idempotency.run_once(call.api_key, item.idempotency_key, idempotency.NOTIFY,
                                                          item.fingerprint, produce)
    except ApiError as exc:
        return {"status": exc.status, "body": {"error": {"code": exc.code, "message": exc.message}}}
    except services.ServiceError as exc:
        return {"status": 400, "body": {"error": {"code": exc.code, "message": str(exc)}}}
    return {"status": status, "body": body, **({"replayed": True} if replayed else {})}


@endpoint("POST", name="processes/start", body="json")
def start_process(call: Call) -> Answer:
    data = parse_start(call.data)
    process, created = services.start_process(
        call.api_key, uuid=data.uuid, name=data.name, tags=data.tags, parent_uuid=data.parent_uuid,
        heartbeat_interval=data.heartbeat_interval, metadata=data.metadata, total=data.total,
        actions=data.actions,
    )
    return (201 if created else 200), {"uuid": str(process.uuid), "state": process.state}


@endpoint("POST", name="heartbeat", body="json")
def heartbeat(call: Call) -> Answer:
    data = parse_heartbeat(call.data)
    answer = services.heartbeat_answer(call.api_key, uuid=data.uuid, done=data.done, total=data.total,
                                       metrics=data.metrics, step=data.step)
    return 200, answer


@endpoint("POST", name="processes/finish", body="json")
def finish_process(call: Call) -> Answer:
    data = parse_finish(call.data)
    process, _ = services.finish_process(
        call.api_key, uuid=data.uuid, status=data.status, error=data.error, traceback=data.traceback,
        runtime_s=data.runtime_s, peak_memory_mb=data.peak_memory_mb, metrics=data.metrics,
        exit_reason=data.exit_reason, diagnosis=data.diagnosis,
    )
    return 200, {"state": process.state}


# ---------------------------------------------------------------------------------- schema


@endpoint("GET", name="openapi.json", auth=False, atomic=False)
def openapi(call: Call) -> Answer:
    return 200, openapi_schema(server_url=call.request.build_absolute_uri("/"))
