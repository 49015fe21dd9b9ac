from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import Account, ApiKey, PairingRequest
from core.admin import adopt_saved
from core.state_machine import InvalidTransition


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("telegram_user_id", "username", "first_name", "chat_id", "created_at", "last_active_at",
                    "blocked_at")
    list_filter = ("created_at", "last_active_at", ("blocked_at", admin.EmptyFieldListFilter))
    search_fields = ("telegram_user_id", "username", "first_name", "last_name")
    readonly_fields = ("created_at",)
    inlines = [ApiKeyInline]
    actions: list[str] = []  # workers.admin adds "Issue a worker connect token"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "account", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("prefix", "account__username", "account__telegram_user_id")
    list_select_related = ("account",)
    fields = ("account", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke_keys"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return ("account",) if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        """Adding a key issues one (revoking the account's previous key) and shows it once."""
        key, raw = ApiKey.issue(obj.account)
        adopt_saved(obj, key)
        self.message_user(
            request, f"New key for {key.account} — shown only now, hand it over securely: {raw}", messages.WARNING
        )

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset:
            try:
                key.revoke()
                revoked += 1
            except InvalidTransition:
                pass
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(PairingRequest)
class PairingRequestAdmin(admin.ModelAdmin):
    list_display = ("code", "state", "hostname", "account", "created_at", "expires_at")
    list_filter = ("state", "created_at")
    search_fields = ("code", "hostname", "account__username")
    list_select_related = ("account",)
    fields = ("code", "state", "hostname", "label", "key_prefix", "account", "created_at", "expires_at",
              "confirmed_at", "claimed_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
