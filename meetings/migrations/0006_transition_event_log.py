"""The event log (meetings/events/log.py): each transition carries its user (backfilled from its
meeting) and, from now on, its event body; a user's applied transitions are one index range.
Transitions recorded before have no stored body: the log reads their webhook delivery's, or builds
one from the meeting as it is."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import meetings.models


class Migration(migrations.Migration):

    dependencies = [
        ('meetings', '0005_scheduled_bots'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='meetingtransition',
            name='event',
            field=meetings.models.EventField(blank=True, default=''),
        ),
        migrations.AddField(
            model_name='meetingtransition',
            name='user',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.RunSQL(
            "UPDATE meetings_meetingtransition t SET user_id = m.user_id FROM meetings_meeting m "
            "WHERE m.id = t.meeting_id AND t.user_id IS NULL",
            migrations.RunSQL.noop, elidable=True),
        migrations.AddIndex(
            model_name='meetingtransition',
            index=models.Index(condition=models.Q(('applied', True)), fields=['user', 'id'], name='transition_user_event_log'),
        ),
    ]
