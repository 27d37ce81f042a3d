from django.apps import AppConfig


class MeetingsConfig(AppConfig):
    name = "meetings"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from meetings.launching import bot_credentials
        from meetings.stopping import post_meeting

        # An ended meeting's bots lose their Redis users (the sweep is the backstop).
        post_meeting.register(bot_credentials.remove_after_meeting)
        # Tagged "security": a grant that could reach our keys must not start at all.
        checks.register(bot_credentials.check_grants, checks.Tags.security)
