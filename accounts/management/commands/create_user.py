import argparse

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from accounts import services
from accounts.serializers import MAX_CONCURRENT_BOTS_LIMIT


def _bot_limit(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {raw!r}")
    if not 0 <= value <= MAX_CONCURRENT_BOTS_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 0 (unlimited) and {MAX_CONCURRENT_BOTS_LIMIT}")
    return value


class Command(BaseCommand):
    help = "Create a user (or show the existing one with that email)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--name", default="")
        parser.add_argument("--max-concurrent-bots", type=_bot_limit, default=None,
                            help="0 = unlimited; default: DEFAULT_MAX_CONCURRENT_BOTS")
        parser.add_argument("--token", action="store_true", help="also issue an API token and print it")

    def handle(self, *args, email, name, max_concurrent_bots, token, **options):
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"Not a valid email address: {email!r}")
        user, created = services.get_or_create_user(email, name=name, max_concurrent_bots=max_concurrent_bots)
        self.stdout.write(f"{'created' if created else 'exists'}: user {user.id} <{user.email}>")
        if token:
            issued = services.issue_token(user)
            self.stdout.write(f"token {issued.record.id}: {issued.token}")
