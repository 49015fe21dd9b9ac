"""``worker`` rows: connected, reconnected, disconnected."""

from __future__ import annotations

from dataclasses import dataclass

from core.models import OutboxMessage
from jobs.models import Job
from telegram_app.formatting import bold, code, esc, since
from telegram_app.rendering import Rendered, renderer
from workers.models import Worker


def restart_command(worker: Worker | None) -> str:
    """The command that starts the saved worker again on its machine (its copy under ~/.statsbot)."""
    if worker is not None and worker.platform.lower().startswith("win"):
        return 'python "$env:USERPROFILE\\.statsbot\\statsbot_worker.py"'
    return "python3 ~/.statsbot/statsbot_worker.py"


@dataclass(frozen=True)
class Autostart:
    enabled: bool | None  # None: never set up from the chat
    method: str = ""

    def describe(self) -> str:
        if self.enabled is None:
            return "Autostart: not set up from this chat (/worker autostart once it is back)."
        if self.enabled:
            return f"Autostart: on ({esc(self.method or '?')}) — it should come back by itself after a restart or login."
        return "Autostart: off (/worker autostart once it is back)."


def autostart_state(worker: Worker) -> Autostart:
    """What the worker last reported from an ``autostart`` job (the server keeps no other record)."""
    job = (Job.objects.filter(account_id=worker.account_id, action=Job.Action.AUTOSTART, state=Job.State.SUCCEEDED,
                              worker=worker).order_by("-finished_at", "-created_at").first())
    if job is None or not isinstance(job.result, dict):
        return Autostart(enabled=None)
    return Autostart(enabled=bool(job.result.get("enabled")), method=str(job.result.get("method") or ""))


def away_since(worker: Worker) -> str:
    """"since 2026-12-02 14:02 UTC (3h ago)" for an offline worker."""
    moment = worker.disconnected_at or worker.last_seen_at
    return f"since {since(moment)}" if moment else "(it has not been seen yet)"


def offline_text(worker: Worker) -> str:
    """An offline (not revoked) worker: which machine, how long it has been away, how to restart it."""
    return (
        f"💤 Your worker on {bold(worker.machine_name)} is offline {away_since(worker)}.\n\n"
        f"Start it again on that machine:\n{code(restart_command(worker))}\n"
        f"{autostart_state(worker).describe()}\n\n"
        "Jobs you start now wait for it. Replaced that machine? /connect another one."
    )


def waiting_note(job: Job, *, how: bool = True) -> str:
    """For an unfinished job whose worker is away: "waiting for NAME …, offline since …" and how it
    continues ("" when it is not waiting).

    A queued job waits for the account's live worker; a dispatched or running one for the worker it
    was sent to, which resumes or re-runs it when it reconnects.
    """
    if job.state == Job.State.QUEUED:
        worker = Worker.objects.live().filter(account_id=job.account_id).first()
        if worker is None:
            return "waiting for a worker: none is connected" + (". /connect one and the job starts there" if how else "")
    elif job.state in (Job.State.DISPATCHED, Job.State.RUNNING):
        worker = job.worker
    else:
        return ""
    if worker is None or worker.is_online:
        return ""
    note = f"waiting for {bold(worker.machine_name)}, offline {away_since(worker)}"
    if how:
        note += f". It continues when the worker is back: {code(restart_command(worker))} on that machine"
    return note


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
                f"{code(restart_command(worker))}"
            )
        )
    return Rendered(text=f"ℹ️ Local worker {esc(machine)}: {esc(event)}")
