"""``worker`` rows: connected, reconnected, disconnected."""

from __future__ import annotations

from core.models import OutboxMessage
from telegram_app.formatting import bold, code, esc
from telegram_app.rendering import Rendered, renderer
from workers.models import Worker


@renderer(OutboxMessage.Kind.WORKER)
def render_worker_event(message: OutboxMessage) -> Rendered:
    event = message.payload.get("event")
    worker = Worker.objects.filter(pk=message.payload.get("worker_id")).first()
    machine = worker.machine_name if worker else "your machine"
    if event == "connected":
        version = f" · worker {esc(worker.worker_version)}" if worker and worker.worker_version else ""
        return Rendered(
            text=(
                f"✅ {bold('Local Worker Connected!')}\n\n"
                f"Machine: {bold(machine)}\n"
                f"Status: Ready{version}\n\n"
                "You can now use local file paths in /train and /predict.\n"
                "Keep it running across restarts with /worker autostart."
            )
        )
    if event == "reconnected":
        return Rendered(text=f"🔁 Local worker {bold(machine)} is back online. Waiting jobs continue now.")
    if event == "disconnected":
        return Rendered(
            text=(
                f"⚠️ {bold('Local Worker Disconnected')}\n\n"
                f"Machine: {bold(machine)} went offline. New jobs wait until it is back; "
                "running jobs are resumed when it reconnects.\n\n"
                "To start it again on that machine:\n"
                f"{code('python3 ~/.statsbot/statsbot_worker.py')}"
            )
        )
    return Rendered(text=f"ℹ️ Local worker {esc(machine)}: {esc(event)}")
