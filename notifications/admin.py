from django.contrib import admin
from django.http import HttpRequest

from notifications.models import AddressCounter, FailureDigest, IdempotencyRecord, RateCounter, TrackedProcess


@admin.register(TrackedProcess)
class TrackedProcessAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "account", "parent", "started_at", "last_heartbeat_at", "ended_at")
    list_filter = ("state", "started_at")
    search_fields = ("name", "uuid", "account__username", "account__telegram_user_id")
    list_select_related = ("account", "parent")
    fields = ("uuid", "account", "name", "tags", "parent", "state", "started_at", "ended_at",
              "heartbeat_interval", "last_heartbeat_at", "stalled_at", "progress_done", "progress_total",
              "metadata", "metrics", "error", "traceback", "exit_reason", "runtime_s", "peak_memory_mb", "control",
              "control_changed_at", "actions", "pending_actions")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ("key", "endpoint", "api_key", "status_code", "created_at")
    list_filter = ("endpoint",)
    search_fields = ("key",)
    list_select_related = ("api_key",)
    readonly_fields = ("api_key", "key", "endpoint", "fingerprint", "status_code", "response", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(RateCounter)
class RateCounterAdmin(admin.ModelAdmin):
    list_display = ("api_key", "window", "window_start", "count")
    list_filter = ("window",)
    list_select_related = ("api_key",)
    readonly_fields = ("api_key", "window", "window_start", "count")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AddressCounter)
class AddressCounterAdmin(admin.ModelAdmin):
    list_display = ("address", "window", "window_start", "count")
    list_filter = ("window",)
    search_fields = ("address",)
    readonly_fields = ("address", "window", "window_start", "count")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(FailureDigest)
class FailureDigestAdmin(admin.ModelAdmin):
    """Groups of runs that failed together (``notifications.digests``): read-only."""

    list_display = ("account", "opened_at", "size")
    list_select_related = ("account",)
    readonly_fields = ("account", "opened_at", "members")

    @admin.display(description="runs")
    def size(self, digest: FailureDigest) -> int:
        return len(digest.members)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
