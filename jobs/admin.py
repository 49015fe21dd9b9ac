from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import adopt_saved
from core.state_machine import InvalidTransition
from jobs.models import Job
from jobs.services import cancel_job, requeue_job, submit_job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("short_id", "action", "state", "progress", "account", "worker", "created_at", "finished_at")
    list_filter = ("state", "action", "created_at")
    search_fields = ("id", "account__username", "account__telegram_user_id", "error")
    list_select_related = ("account", "worker")
    date_hierarchy = "created_at"
    fields = ("id", "account", "worker", "action", "params", "state", "progress", "stage", "message", "result",
              "error", "error_code", "created_at", "dispatched_at", "started_at", "finished_at", "updated_at")
    readonly_fields = fields
    actions = ["cancel_jobs", "requeue_jobs"]

    def get_fields(self, request: HttpRequest, obj: Job | None = None) -> tuple[str, ...]:
        return ("account", "action", "params") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Job, form: object, change: bool) -> None:
        """Adding a job submits it to the account's worker, exactly as the chat would."""
        adopt_saved(obj, submit_job(obj.account, obj.action, obj.params, context=Job.Context.OPERATOR))

    @admin.display(description="Job")
    def short_id(self, job: Job) -> str:
        return str(job.id)[:8]

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(1 for job in queryset if _quietly(cancel_job, job))
        self.message_user(request, f"Cancelled {done} job(s).", messages.SUCCESS)

    @admin.action(description="Requeue selected jobs")
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(1 for job in queryset if _quietly(requeue_job, job))
        self.message_user(request, f"Requeued {done} job(s).", messages.SUCCESS)


def _quietly(action: Callable[[Job], None], job: Job) -> bool:
    try:
        action(job)
        return True
    except InvalidTransition:
        return False
