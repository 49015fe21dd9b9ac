"""``POST /telegram/webhook/``: Telegram's updates in webhook mode.

The view only checks the secret and stores the update; the bot process (``runbot
--webhook``) handles it. So any web process can take webhook calls, and an update is never
lost if the bot restarts; Telegram's retries of the same update are stored once.
"""

from __future__ import annotations

import hmac
import json
import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from core import events
from core.layer import WEBHOOK_GROUP, ring
from telegram_app.models import IncomingUpdate

logger = logging.getLogger(__name__)

MAX_UPDATE_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def webhook(request: HttpRequest) -> JsonResponse:
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return JsonResponse({"error": "forbidden"}, status=403)
    if len(request.body) > MAX_UPDATE_BYTES:
        return JsonResponse({"error": "too large"}, status=413)
    try:
        data = json.loads(request.body)
        update_id = int(data["update_id"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "not a Telegram update"}, status=400)
    try:
        with transaction.atomic():
            IncomingUpdate.objects.create(update_id=update_id, data=data)
    except IntegrityError:
        logger.info("webhook: update %s received again; already stored", update_id)
    else:
        ring(WEBHOOK_GROUP, events.updates_wake())
    return JsonResponse({"ok": True})
