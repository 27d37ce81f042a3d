"""Before the back-off becomes per user and URL (0004): the per-URL rows cannot be told apart by
user, so they go, and what they held back is due again (the redrive job sends it within an
interval). A receiver that still fails backs off again, for the user whose deliveries fail.

A migration of its own: its row changes and 0004's ALTER TABLE must not share a transaction
(PostgreSQL refuses to alter a table with pending deferred foreign-key checks)."""
from django.db import migrations
from django.utils import timezone


def reset(apps, schema_editor):
    Endpoint = apps.get_model("webhooks", "Endpoint")
    WebhookDelivery = apps.get_model("webhooks", "WebhookDelivery")
    now = timezone.now()
    WebhookDelivery.objects.filter(held_by__isnull=False, status="pending").update(
        held_by=None, next_attempt_at=now, updated_at=now)
    WebhookDelivery.objects.filter(held_by__isnull=False).update(held_by=None)
    Endpoint.objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("webhooks", "0002_endpoint_backoff_and_user_cap"),
    ]

    operations = [
        migrations.RunPython(reset, migrations.RunPython.noop),
    ]
