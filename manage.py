#!/usr/bin/env python
import os
import sys


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botmanager.settings")
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError

    try:
        execute_from_command_line(sys.argv)
    except OperationalError as exc:
        # The stack is down, or runs with other ports than this terminal knows: say so in one
        # line, not with a traceback. Other database errors keep theirs.
        from django.conf import settings

        from devstack import servers as devstack, stackinfo

        db = settings.DATABASES["default"]
        if devstack.port_open(int(db.get("PORT") or 5432), db.get("HOST") or "localhost"):
            raise
        print(f"manage.py: {stackinfo.unreachable_database(settings, exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
