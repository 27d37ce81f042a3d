from django.apps import AppConfig


class MeetingsConfig(AppConfig):
    name = "meetings"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from common import retention as common_retention
        from meetings import retention
        from meetings.bot_protocol import channels
        from meetings.events import log
        from meetings.launching import bot_credentials
        from meetings.lifecycle import listeners
        from meetings.stopping import post_meeting

        # What the meetings app itself hears of every applied transition: the status channel the
        # bot-facing tools watch, the user's live event log, and the post-meeting work.
        listeners.notify(channels.publish_status)
        listeners.notify(log.publish)
        listeners.on_terminal(post_meeting.enqueue)
        # An ended meeting's bots lose their Redis users (the sweep is the backstop).
        post_meeting.register(bot_credentials.remove_after_meeting)
        # Old ended meetings' transitions, with their event bodies, go after RETENTION_TRANSITIONS_DAYS.
        common_retention.register("transitions", retention.purge_transitions)
        # Tagged "security": a grant that could reach our keys must not start at all.
        checks.register(bot_credentials.check_grants, checks.Tags.security)
