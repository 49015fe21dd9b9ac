from django.contrib import admin
from django.http import HttpRequest

from telegram_app.models import BotState


@admin.register(BotState)
class BotStateAdmin(admin.ModelAdmin):
    list_display = ("kind", "name", "key", "updated_at")
    list_filter = ("kind", "name")
    search_fields = ("key",)
    readonly_fields = ("kind", "name", "key", "data", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
