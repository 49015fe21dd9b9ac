"""What daphne and Channels cost by themselves: the worker WebSocket answered from memory.

Served by ``ws_scale.py --ceiling`` on the same HTTP server as the product, with the product's
settings (so the same channel layer), it is the framework's ceiling for connect + auth: the
product's consumer can come close to it, never above. Not part of the product.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "statsbot_site.settings")
django.setup()

from channels.consumer import get_handler_name  # noqa: E402
from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class MemoryConsumer(AsyncJsonWebsocketConsumer):
    """Accepts, answers ``auth`` with success and ``ping`` with ``pong``; no database, no groups."""

    async def dispatch(self, message: dict) -> None:
        """Without Channels' per-message database hop, as ``WorkerConsumer.dispatch``."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive_json(self, content: dict, **kwargs: object) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "auth":
            await self.send_json({"type": "auth_response", "success": True, "worker_id": 1, "heartbeat_interval": 20})
        elif kind == "ping":
            await self.send_json({"type": "pong"})


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws/worker/", MemoryConsumer.as_asgi())])})
