from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import DEFAULT_GRACE, Account, ApiKey, PairingRequest
from accounts.networks import InvalidNetworks, parse_networks, split_entries
from core.admin import adopt_saved
from core.state_machine import InvalidTransition


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at", "expires_at")
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


class AllowedNetworksField(forms.CharField):
    """The allowlist as text (one CIDR network per line, or separated by spaces/commas); empty: any address."""

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        try:
            return parse_networks(split_entries(text))
        except InvalidNetworks as exc:
            raise forms.ValidationError(str(exc)) from None


class ApiKeyForm(forms.ModelForm):
    allowed_networks = AllowedNetworksField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="CIDR networks (IPv4/IPv6) requests with this key may come from, one per line; empty allows "
                  "any address. Other addresses are refused with 403 ip_not_allowed.",
    )

    class Meta:
        model = ApiKey
        fields = ("account", "allowed_networks")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ("name", "prefix", "account", "created_at", "last_used_at", "revoked_at", "expires_at",
                    "allowlist")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), ("expires_at", admin.EmptyFieldListFilter),
                   "created_at")
    search_fields = ("name", "prefix", "account__username", "account__telegram_user_id")
    list_select_related = ("account",)
    fields = ("account", "name", "prefix", "created_at", "last_used_at", "revoked_at", "expires_at", "replaced_by",
              "allowed_networks")
    readonly_fields = fields[:-1]
    actions = ["revoke_keys", "rotate_keys"]

    @admin.display(description="Allowed networks")
    def allowlist(self, obj: ApiKey) -> str:
        return ", ".join(obj.allowed_networks or []) or "any"

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return ("account",) if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        """Adding a key issues one (the account's other keys keep working) and shows it once;
        changing one saves its allowlist only (the form validated it)."""
        if change:
            obj.save(update_fields=["allowed_networks"])
            return
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

    @admin.action(description="Rotate selected keys (the old ones work 24 h more)")
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        """A successor per active key, shown once; the old keys expire after the default grace period."""
        skipped = 0
        for key in queryset:
            try:
                successor, raw = key.rotate(DEFAULT_GRACE)
            except InvalidTransition:
                skipped += 1
                continue
            self.message_user(
                request, f"New key for {successor.label} of {successor.account} (replaces {key.prefix}…, which "
                f"works until {key.expires_at:%Y-%m-%d %H:%M} UTC) — shown only now: {raw}", messages.WARNING,
            )
        if skipped:
            self.message_user(request, f"Skipped {skipped} key(s): revoked, expired or rotated already.",
                              messages.INFO)


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
