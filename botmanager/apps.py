from django.apps import AppConfig


class BotmanagerConfig(AppConfig):
    name = "botmanager"
    verbose_name = "botmanager"

    def ready(self):
        from django.core import checks

        from botmanager.checks import check_orchestrator, check_secrets

        # Tagged "security" and run everywhere (not only with --deploy): a deployment with a known
        # secret must not start at all.
        checks.register(check_secrets, checks.Tags.security)
        checks.register(check_orchestrator)
