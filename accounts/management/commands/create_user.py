from django.core.management.base import BaseCommand

from accounts import services


class Command(BaseCommand):
    help = "Create a user (or show the existing one with that email)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--name", default="")
        parser.add_argument("--max-concurrent-bots", type=int, default=None)
        parser.add_argument("--token", action="store_true", help="also issue an API token and print it")

    def handle(self, *args, email, name, max_concurrent_bots, token, **options):
        user, created = services.get_or_create_user(email, name=name, max_concurrent_bots=max_concurrent_bots)
        self.stdout.write(f"{'created' if created else 'exists'}: user {user.id} <{user.email}>")
        if token:
            issued = services.issue_token(user)
            self.stdout.write(f"token {issued.record.id}: {issued.token}")
