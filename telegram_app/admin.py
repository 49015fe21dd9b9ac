from django.contrib import admin
from django.http import HttpRequest

from telegram_app.models import BotState, Dashboard


@admin.register(BotState)
class BotStateAdmin(admin.ModelAdmin):
    list_display = ("kind", "name", "key", "updated_at")
    list_filter = ("kind", "name")
    search_fields = ("key",)
    readonly_fields = ("kind", "name", "key", "data", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):
    list_display = ("account", "state", "opened_at", "edited_at", "idle_since", "stopped_at")
    list_filter = ("state",)
    search_fields = ("account__username", "account__telegram_user_id")
    readonly_fields = ("account", "state", "edit_key", "text", "opened_at", "edited_at", "idle_since", "stopped_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
