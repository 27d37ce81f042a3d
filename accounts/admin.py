import json

from django import forms
from django.contrib import admin
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from accounts.models import APIToken, User


class APITokenInline(admin.TabularInline):
    model = APIToken
    extra = 0
    fields = ["prefix", "created_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        # Tokens are issued by the admin API or `manage.py create_token` (the only places that
        # show the value once); a row made here would have an empty hash and no usable token.
        return False


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ["id", "email", "name", "max_concurrent_bots", "is_staff", "created_at"]
    search_fields = ["email", "name"]
    # The webhook is set up by PUT /user/webhook (validated, with its secret): shown, not edited
    # here; the secret is never shown.
    # The password hash is never shown (an offline guessing target for whoever sees the page):
    # only whether a usable password is set.
    readonly_fields = ["created_at", "last_login", "password_state", "settings", "webhook_url", "webhook_health"]
    exclude = ["user_permissions", "groups", "data", "webhook_secret", "password"]
    inlines = [APITokenInline]

    @admin.display(description="password")
    def password_state(self, user: User) -> str:
        if user.has_usable_password():
            return "Set (not shown). Change it with: manage.py changepassword <email>"
        return "No usable password (cannot log in to this console)."

    @admin.display(description="webhook deliveries")
    def webhook_health(self, user: User) -> str:
        # By URL name: the webhooks app sits above accounts and is not imported here.
        try:
            deliveries = reverse("admin:webhooks_webhookdelivery_changelist")
            endpoints = reverse("admin:webhooks_endpoint_changelist")
        except NoReverseMatch:
            return "-"
        return format_html('<a href="{}?user__id__exact={}">deliveries</a> · '
                           '<a href="{}?user__id__exact={}">endpoint health</a>', deliveries, user.pk, endpoints, user.pk)

    @admin.display(description="data")
    def settings(self, user: User) -> str:
        return json.dumps(user.data or {}, indent=2, sort_keys=True)

    formfield_overrides = {models.URLField: {"form_class": forms.URLField, "assume_scheme": "https"}}


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "prefix", "created_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["user__email", "prefix"]
    # The token's hash is never shown either: the prefix names the token well enough.
    readonly_fields = ["prefix", "created_at", "user"]
    exclude = ["token_hash"]

    def has_add_permission(self, request) -> bool:
        return False  # see APITokenInline.has_add_permission
