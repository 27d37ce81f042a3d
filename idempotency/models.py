"""A user's `Idempotency-Key` and the first answer given under it (idempotency/services.py)."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    class State(models.TextChoices):
        RUNNING = "running"
        DONE = "done"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # "POST /bots", "DELETE /bots/zoom/123": a key names one request, to one endpoint.
    endpoint = models.TextField()
    request_hash = models.CharField(max_length=64)  # SHA-256 of the canonical JSON body
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    # Which claim holds a running record: a request whose lease ran out and was taken over must not
    # write its answer over the new holder's.
    lease_token = models.UUIDField()
    lease_until = models.DateTimeField()
    response_status = models.PositiveSmallIntegerField(null=True)
    # The answer's JSON as text: jsonb would reorder its keys, and a replay gives the same bytes.
    response_body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_unique_user_key")]

    def __str__(self) -> str:
        return f"{self.key} ({self.endpoint}, {self.state})"
