from django.apps import AppConfig


class IdempotencyConfig(AppConfig):
    name = "idempotency"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from common import retention
        from idempotency import services

        # Records past IDEMPOTENCY_KEY_TTL_SECONDS go with the retention job's other purgers.
        retention.register("idempotency", services.purge_expired_batch)
