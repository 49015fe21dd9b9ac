"""python-telegram-bot persistence in the database, so conversations survive a restart."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from channels.db import database_sync_to_async
from django.utils import timezone
from telegram.ext import BasePersistence, PersistenceInput

from telegram_app.models import BotState

Kind = BotState.Kind


def _save(kind: str, name: str, key: str, data: Any) -> None:
    BotState.objects.update_or_create(
        kind=kind, name=name, key=key, defaults={"data": data, "updated_at": timezone.now()}
    )


def _delete(kind: str, key: str) -> None:
    BotState.objects.filter(kind=kind, key=key).delete()


def _load(kind: str) -> list[tuple[str, str, Any]]:
    return list(BotState.objects.filter(kind=kind).values_list("name", "key", "data"))


class DjangoPersistence(BasePersistence):
    """Stores user data and conversation states as JSON rows (``BotState``)."""

    def __init__(self, update_interval: float = 1.0) -> None:
        super().__init__(
            store_data=PersistenceInput(bot_data=False, chat_data=False, user_data=True, callback_data=False),
            update_interval=update_interval,
        )

    async def get_user_data(self) -> dict[int, dict[Any, Any]]:
        rows = await database_sync_to_async(_load)(Kind.USER_DATA)
        return defaultdict(dict, {int(key): data or {} for _, key, data in rows})

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        await database_sync_to_async(_save)(Kind.USER_DATA, "", str(user_id), json.loads(json.dumps(data, default=str)))

    async def drop_user_data(self, user_id: int) -> None:
        await database_sync_to_async(_delete)(Kind.USER_DATA, str(user_id))

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        return None

    async def get_conversations(self, name: str) -> dict[tuple[int | str, ...], object]:
        rows = await database_sync_to_async(_load)(Kind.CONVERSATION)
        return {tuple(json.loads(key)): data for row_name, key, data in rows if row_name == name}

    async def update_conversation(self, name: str, key: tuple[int | str, ...], new_state: object | None) -> None:
        await database_sync_to_async(_save)(Kind.CONVERSATION, name, json.dumps(list(key)), new_state)

    # Chat data, bot data and callback data are not used by StatsBot.
    async def get_chat_data(self) -> dict[int, dict[Any, Any]]:
        return defaultdict(dict)

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        return None

    async def drop_chat_data(self, chat_id: int) -> None:
        return None

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        return None

    async def get_bot_data(self) -> dict[Any, Any]:
        return {}

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        return None

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        return None

    async def get_callback_data(self) -> None:
        return None

    async def update_callback_data(self, data: Any) -> None:
        return None

    async def flush(self) -> None:
        return None


