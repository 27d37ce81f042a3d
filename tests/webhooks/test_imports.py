"""The webhook outbox builds its payloads without the API layer: meetings.lifecycle.transitions imports the
outbox, and the API serializers import meetings.bot_protocol.callbacks, which imports lifecycle (a circle)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from django.conf import settings

PROBE = """
import json, sys
import django
django.setup()
import meetings.lifecycle.transitions
from meetings.models import Meeting
from webhooks import outbox
# The path a transition takes: the payload of an event, built from an (unsaved) meeting.
outbox.meeting_response(Meeting(id=1, user_id=1, platform="google_meet", native_meeting_id="abc-defg-hij"))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("meetings.") or m.startswith("rest_framework."))))
"""


def test_lifecycle_and_the_outbox_do_not_import_the_api_layer():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "botmanager.settings"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=settings.BASE_DIR, env=env, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "meetings.lifecycle.transitions" in modules and "meetings.events.payloads" in modules
    assert not {m for m in modules if m == "meetings.api" or m.startswith("meetings.api.")}
    assert "meetings.bot_protocol.callbacks" not in modules
    assert not {"rest_framework.views", "rest_framework.serializers"} & modules
