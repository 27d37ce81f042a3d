from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The final event is a post-meeting step: written once per ended meeting, in the
        # post-meeting transaction (meetings.stopping.post_meeting runs its registry in order).
        from accounts import webhook
        from common import retention as common_retention
        from meetings import retention as meetings_retention
        from meetings.lifecycle import listeners
        from meetings.stopping import post_meeting
        from webhooks import health, outbox, retention

        post_meeting.register(outbox.record_final)
        # Every applied transition's event, written in the transition's own transaction.
        listeners.in_transaction(outbox.record_status_change)
        # A user who sets their webhook again (fixed receiver, new URL) re-enables their endpoint.
        webhook.on_webhook_set(health.reenable)
        # Finished deliveries go after RETENTION_DELIVERIES_DAYS; a deleted meeting's are stubbed.
        common_retention.register("deliveries", retention.purge_deliveries)
        meetings_retention.on_redact(retention.redact_deliveries)
