"""Users and their API tokens. Tokens are stored as SHA-256 hashes, never in clear."""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models.functions import Lower


def default_max_concurrent_bots() -> int:
    return settings.DEFAULT_MAX_CONCURRENT_BOTS


# The webhook settings were keys of User.data before they had columns; the admin API (Vexa's
# shape) still spells the URL as data.webhook_url.
WEBHOOK_DATA_KEYS = ("webhook_url", "webhook_secret")


class UserManager(BaseUserManager):
    def create_user(self, email: str, password: str | None = None, **fields) -> "User":
        if isinstance(fields.get("data"), dict):
            # Given in the old spelling, the webhook settings go to their columns.
            data = dict(fields["data"])
            for key in WEBHOOK_DATA_KEYS:
                if key in data:
                    fields[key] = data.pop(key) or ""
            fields["data"] = data
        user = self.model(email=self.normalize_email(email), **fields)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> "User":
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=255, blank=True, default="")
    image_url = models.URLField(max_length=1024, blank=True, default="")
    # 0 means unlimited.
    max_concurrent_bots = models.PositiveIntegerField(default=default_max_concurrent_bots)
    # Free-form settings of the admin API (Vexa's `data`).
    data = models.JSONField(default=dict, blank=True)
    # Where webhook events go (empty: none), and the secret that signs them: never logged, never
    # returned except by PUT /user/webhook, which sets it up.
    webhook_url = models.CharField(max_length=2048, blank=True, default="")
    webhook_secret = models.CharField(max_length=128, blank=True, default="")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = UserManager()

    class Meta:
        constraints = [
            # Every lookup by email is case-insensitive, so uniqueness must be too.
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique",
                                    violation_error_message="A user with this email already exists."),
        ]

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class APIToken(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters of the token, so a person can tell tokens apart in the admin.
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
