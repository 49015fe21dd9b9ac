from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import InvalidTransition
from notifications.models import Attachment, IdempotencyRecord, OutboxMessage, RateCounter, TrackedProcess


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    fields = ("kind", "filename", "content_type", "caption")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "account", "chat_id", "edit_key", "attempts", "created_at", "sent_at")
    list_filter = ("state", "kind", "created_at")
    search_fields = ("account__username", "account__telegram_user_id", "chat_id", "text", "edit_key")
    list_select_related = ("account",)
    fields = ("account", "chat_id", "kind", "payload", "text", "parse_mode", "buttons", "edit_key", "state",
              "attempts", "next_attempt_at", "claimed_at", "claimed_by", "sent_at", "sent_message_id", "error",
              "created_at")
    readonly_fields = fields
    inlines = [AttachmentInline]
    actions = ["retry_messages"]

    def get_fields(self, request: HttpRequest, obj: OutboxMessage | None = None) -> tuple[str, ...]:
        return ("account", "text") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: OutboxMessage | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_form(self, request: HttpRequest, obj: OutboxMessage | None = None, **kwargs: object) -> type:
        form = super().get_form(request, obj, **kwargs)
        if obj is None:
            form.base_fields["text"].required = True
        return form

    def get_inlines(self, request: HttpRequest, obj: OutboxMessage | None) -> list:
        return [] if obj is None else self.inlines

    def save_model(self, request: HttpRequest, obj: OutboxMessage, form: object, change: bool) -> None:
        """Adding a message sends plain text to the user's chat through the outbox."""
        from accounts.admin import adopt_saved
        from notifications.outbox import enqueue

        adopt_saved(obj, enqueue(obj.account, text=obj.text, parse_mode=""))

    @admin.action(description="Retry selected failed messages")
    def retry_messages(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        from statsbot_site.layer import OUTBOX_GROUP, ring

        done = 0
        for message in queryset:
            try:
                message.requeue()
                done += 1
            except InvalidTransition:
                pass
        if done:
            ring(OUTBOX_GROUP, {"type": "outbox.wake"})
        self.message_user(request, f"Requeued {done} message(s).", messages.SUCCESS)


@admin.register(TrackedProcess)
class TrackedProcessAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "account", "parent", "started_at", "last_heartbeat_at", "ended_at")
    list_filter = ("state", "started_at")
    search_fields = ("name", "uuid", "account__username", "account__telegram_user_id")
    list_select_related = ("account", "parent")
    fields = ("uuid", "account", "name", "tags", "parent", "state", "started_at", "ended_at",
              "heartbeat_interval", "last_heartbeat_at", "stalled_at", "progress_done", "progress_total",
              "metadata", "metrics", "error", "traceback", "exit_reason", "runtime_s", "peak_memory_mb")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ("key", "endpoint", "api_key", "status_code", "created_at")
    list_filter = ("endpoint",)
    search_fields = ("key",)
    list_select_related = ("api_key",)
    readonly_fields = ("api_key", "key", "endpoint", "status_code", "response", "created_at")

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
