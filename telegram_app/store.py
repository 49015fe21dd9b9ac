"""The bot's view of the database: every ORM call the handlers need, made safe for async code.

Handlers run on the event loop and must not touch the ORM directly; each function here is
plain sync code wrapped once with ``database_sync_to_async``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from telegram import Update

from accounts.models import Account, ApiKey
from core.state_machine import InvalidTransition
from jobs import services as job_services
from jobs.models import Job
from workers import services as worker_services
from workers.models import Worker


@dataclass(frozen=True)
class Overview:
    account: Account
    created: bool
    worker: Worker | None
    key: ApiKey | None
    new_key: str | None  # shown once, for a brand-new account


def _account_from_update(update: Update) -> tuple[Account, bool]:
    user, chat = update.effective_user, update.effective_chat
    if user is None:  # every update the handlers take comes from a user
        raise ValueError(f"update {update.update_id} has no user")
    return Account.from_telegram(
        user_id=user.id,
        chat_id=chat.id if chat else user.id,
        username=user.username or "",
        first_name=user.first_name or "",
        last_name=user.last_name or "",
        language_code=user.language_code or "",
    )


@database_sync_to_async
def account_for(update: Update) -> Account:
    return _account_from_update(update)[0]


@database_sync_to_async
def overview(update: Update) -> Overview:
    """The account (created on first contact, with its first key), its worker and its key."""
    account, created = _account_from_update(update)
    new_key = None
    if created:
        _, new_key = ApiKey.issue(account)
    return Overview(
        account=account,
        created=created,
        worker=worker_services.live_worker(account),
        key=account.active_key(),
        new_key=new_key,
    )


@database_sync_to_async
def live_worker(account: Account) -> Worker | None:
    return worker_services.live_worker(account)


@database_sync_to_async
def online_worker(account: Account) -> Worker | None:
    worker = worker_services.live_worker(account)
    return worker if worker and worker.is_online else None


@database_sync_to_async
def issue_connect_command(account: Account) -> worker_services.ConnectCommand:
    return worker_services.issue_connect_command(account)


@database_sync_to_async
def disconnect_worker(account: Account) -> Worker | None:
    worker = worker_services.live_worker(account)
    if worker is not None:
        worker_services.revoke_worker(worker, Worker.RevokeReason.USER)
    return worker


@database_sync_to_async
def submit_job(account: Account, action: str, params: dict[str, Any], context: str = Job.Context.NONE) -> Job:
    return job_services.submit_job(account, action, params, context=context)


@database_sync_to_async
def get_job(account: Account, job_id: str) -> Job | None:
    return Job.objects.filter(pk=job_id, account=account).select_related("worker").first()


@database_sync_to_async
def recent_jobs(account: Account, limit: int = 10) -> list[Job]:
    return list(Job.objects.filter(account=account).select_related("worker")[:limit])


@database_sync_to_async
def running_job_count(account: Account) -> int:
    return Job.objects.filter(account=account).unfinished().count()


@database_sync_to_async
def cancel_job(account: Account, job_id: str) -> tuple[Job | None, str]:
    job = Job.objects.filter(pk=job_id, account=account).first()
    if job is None:
        return None, "That job does not exist."
    try:
        job_services.cancel_job(job)
    except InvalidTransition:
        return job, f"That job is already {job.state}."
    return job, ""


@database_sync_to_async
def stop_early(account: Account, job_id: str) -> str:
    """Ask a running ⭐ Auto search to finish with its best model so far; "" or why it cannot."""
    job = Job.objects.filter(pk=job_id, account=account).first()
    if job is None:
        return "That job does not exist."
    if job.stop_requested:
        return "Already stopping — the best model so far is being saved."
    try:
        job_services.stop_early(job)
    except InvalidTransition:
        return f"That job is already {job.state}."
    except job_services.JobError as exc:
        return str(exc)
    return ""


@database_sync_to_async
def revoke_key(account: Account) -> ApiKey | None:
    key = account.active_key()
    if key is not None:
        key.revoke()
    return key


@database_sync_to_async
def issue_key(account: Account) -> tuple[ApiKey, str]:
    return ApiKey.issue(account)


@database_sync_to_async
def active_key(account: Account) -> ApiKey | None:
    return account.active_key()


@database_sync_to_async
def active_keys(account: Account) -> list[ApiKey]:
    return account.active_keys()
