from django.core.management.base import BaseCommand, CommandError

from accounts import services
from accounts.models import User


class Command(BaseCommand):
    help = "Issue an API token for a user (by email or id). The token is printed once."

    def add_arguments(self, parser):
        parser.add_argument("user", help="email or numeric id")

    def handle(self, *args, user, **options):
        lookup = {"pk": int(user)} if user.isdigit() else {"email__iexact": user}
        found = User.objects.filter(**lookup).first()
        if found is None:
            raise CommandError(f"No user {user!r}; create one with `manage.py create_user EMAIL`.")
        issued = services.issue_token(found)
        self.stdout.write(f"token {issued.record.id} for {found.email}: {issued.token}")
