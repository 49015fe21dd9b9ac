"""Signals the workers app sends for whoever wants to observe it (``ops`` measures connects with them)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent by ``Worker.mark_connected`` (inside the consumer's sync database call) with
# ``worker``, ``at`` (the connection time) and ``first`` (True on the worker's first connection
# ever, i.e. the first ``ready`` after its connect token was used).
worker_connected = Signal()
