from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin import AccountAdmin
from accounts.models import Account
from core.state_machine import InvalidTransition
from workers.models import ConnectToken, Worker
from workers.services import issue_connect_command, revoke_worker


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
        done = 0
        for worker in queryset:
            try:
                revoke_worker(worker, Worker.RevokeReason.OPERATOR)
                done += 1
            except InvalidTransition:
                pass
        self.message_user(request, f"Disconnected {done} worker(s).", messages.SUCCESS)


# The account page gets the connect-token action here, where workers live: accounts know nothing
# of workers (the usual Django way to extend another app's admin: register a subclass in its place).
admin.site.unregister(Account)


@admin.register(Account)
class AccountWithWorkerAdmin(AccountAdmin):
    actions = [*AccountAdmin.actions, "issue_connect_token"]

    @admin.action(description="Issue a worker connect token (shows the command once)")
    def issue_connect_token(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        for account in queryset:
            command = issue_connect_command(account)
            self.message_user(
                request,
                f"{account}: valid 5 minutes, single use — Mac/Linux: {command.unix}  ·  Windows: {command.windows}",
                messages.SUCCESS,
            )
