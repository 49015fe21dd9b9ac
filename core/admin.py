from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import InlineModelAdmin
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from core import claims, events
from core.layer import OUTBOX_GROUP, ring
from core.models import Attachment, BotIdentity, OutboxMessage
from core.outbox import enqueue
from core.state_machine import InvalidTransition


def adopt_saved(obj: Model, saved: Model) -> None:
    """Make the admin's unsaved ``obj`` stand for the row a service created (for its log and redirect)."""
    obj.__dict__.update({k: v for k, v in saved.__dict__.items() if k != "_state"})
    obj._state = saved._state


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    fields = ("kind", "filename", "content_type", "caption")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "account", "chat_id", "edit_key", "attempts", "created_at", "sent_at")
    list_filter = ("state", "kind", "created_at")
    search_fields = ("account__username", "account__telegram_user_id", "chat_id", "text", "edit_key")
    list_select_related = ("account",)
    fields = ("account", "chat_id", "kind", "payload", "text", "parse_mode", "buttons", "edit_key", "state",
              "attempts", "next_attempt_at", "claimed_at", "claimed_by", "lease_expires_at", "sent_at",
              "sent_message_id", "error", "created_at")
    readonly_fields = fields
    inlines = [AttachmentInline]
    actions = ["retry_messages"]

    def get_fields(self, request: HttpRequest, obj: OutboxMessage | None = None) -> tuple[str, ...]:
        return ("account", "text") if obj is None else self.fields

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list, headed by the senders holding claims and when their leases run out."""
        context = {**(extra_context or {}), "live_senders": claims.live_senders(), "now": timezone.now()}
        return super().changelist_view(request, extra_context=context)

    def get_readonly_fields(self, request: HttpRequest, obj: OutboxMessage | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_form(self, request: HttpRequest, obj: OutboxMessage | None = None, change: bool = False,
                 **kwargs: Any) -> type[ModelForm]:
        form = super().get_form(request, obj, change, **kwargs)
        if obj is None:
            form.base_fields["text"].required = True
        return form

    def get_inlines(self, request: HttpRequest, obj: OutboxMessage | None) -> list[type[InlineModelAdmin[Any, Any]]]:
        return [] if obj is None else list(self.inlines)

    def save_model(self, request: HttpRequest, obj: OutboxMessage, form: Any, change: bool) -> None:
        """Adding a message sends plain text to the user's chat through the outbox."""
        adopt_saved(obj, enqueue(obj.account, text=obj.text, parse_mode=OutboxMessage.ParseMode.NONE))

    @admin.action(description="Retry selected failed messages")
    def retry_messages(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        done = 0
        for message in queryset:
            try:
                message.requeue()
                done += 1
            except InvalidTransition:
                pass
        if done:
            ring(OUTBOX_GROUP, events.outbox_wake())
        self.message_user(request, f"Requeued {done} message(s).", messages.SUCCESS)


@admin.register(BotIdentity)
class BotIdentityAdmin(admin.ModelAdmin):
    list_display = ("username", "deep_link_base", "updated_at")
    readonly_fields = ("username", "deep_link_base", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
