"""Webhook delivery: while a webhook is set, pending updates are POSTed to it in order."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp

from .state import SandboxState

logger = logging.getLogger(__name__)

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


class WebhookDispatcher:
    """Delivers ``state.updates`` to ``state.webhook`` one at a time, retrying failures.

    An update is removed once the receiver answers 2xx; after ``state.webhook_max_attempts``
    failed attempts it is dropped and the error is kept for getWebhookInfo.
    """

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._task = asyncio.create_task(self._run(), name="sandbox-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        state = self.state
        while not state.closed:
            if state.webhook is not None and state.updates:
                await self._deliver_first()
                continue
            await state.updates_signal.wait(None)

    async def _deliver_first(self) -> None:
        state = self.state
        update = state.updates[0]
        attempts = max(1, state.webhook_max_attempts)
        for attempt in range(attempts):
            webhook = state.webhook
            if webhook is None or not state.updates or state.updates[0] is not update:
                return  # webhook removed or updates dropped meanwhile
            error = await self._post(webhook.url, webhook.secret_token, update)
            if error is None:
                if state.updates and state.updates[0] is update:
                    state.updates.popleft()
                state.webhook_deliveries += 1
                return
            webhook.last_error_date = int(time.time())
            webhook.last_error_message = error
            logger.warning("webhook delivery of update %s failed (%s)", update["update_id"], error)
            if attempt + 1 < attempts:
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])  # retry backoff
        if state.updates and state.updates[0] is update:
            state.updates.popleft()
            logger.warning(
                "update %s dropped after %s failed webhook attempts", update["update_id"], attempts
            )

    async def _post(self, url: str, secret: str | None, update: dict[str, object]) -> str | None:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        try:
            async with self._session.post(
                url, data=json.dumps(update, ensure_ascii=False).encode(), headers=headers
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"Wrong response from the webhook: {response.status} {response.reason}"
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"Connection failed: {error or type(error).__name__}"
