from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import InvalidTransition
from workers.models import ConnectToken, Worker


@admin.register(ConnectToken)
class ConnectTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "account", "created_at", "expires_at", "used_at")
    list_filter = (("used_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("prefix", "account__username", "account__telegram_user_id")
    list_select_related = ("account",)
    fields = ("account", "prefix", "created_at", "expires_at", "used_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # use the "Issue a worker connect token" action on accounts


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("machine_name", "account", "online", "worker_version", "platform", "python_version",
                    "connected_at", "last_seen_at", "revoked_at")
    list_filter = ("platform", "worker_version", ("revoked_at", admin.EmptyFieldListFilter),
                   ("channel_name", admin.EmptyFieldListFilter))
    search_fields = ("machine_name", "machine_id", "account__username", "account__telegram_user_id")
    list_select_related = ("account",)
    fields = ("account", "machine_name", "machine_id", "platform", "os_release", "python_version",
              "worker_version", "packages", "models_available", "credential_prefix", "created_at",
              "connected_at", "last_seen_at", "disconnected_at", "disconnect_notified_at", "revoked_at",
              "revoke_reason")
    readonly_fields = fields
    actions = ["disconnect_workers"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers enroll themselves with a connect token

    @admin.display(boolean=True, description="Online")
    def online(self, worker: Worker) -> bool:
        return worker.is_online

    @admin.action(description="Disconnect and revoke the credential")
    def disconnect_workers(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        from workers.services import revoke_worker

        done = 0
        for worker in queryset:
            try:
                revoke_worker(worker, Worker.RevokeReason.OPERATOR)
                done += 1
            except InvalidTransition:
                pass
        self.message_user(request, f"Disconnected {done} worker(s).", messages.SUCCESS)
