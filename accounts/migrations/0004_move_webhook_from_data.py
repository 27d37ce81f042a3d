"""The webhook URL and secret move from User.data keys to their columns (0003), and back on
reverse. A value that is not a string, or longer than its column, is dropped from data: it was
never usable (no API writes one; a delivery could not record a longer URL)."""
from django.db import migrations

KEYS = ("webhook_url", "webhook_secret")


def to_columns(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    for user in User.objects.filter(data__has_any_keys=list(KEYS)).iterator():
        data = dict(user.data)
        for key in KEYS:
            value = data.pop(key, None)
            if isinstance(value, str) and value and len(value) <= User._meta.get_field(key).max_length:
                setattr(user, key, value)
        user.data = data
        user.save(update_fields=["data", *KEYS])


def to_data(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    for user in User.objects.exclude(webhook_url="", webhook_secret="").iterator():
        data = dict(user.data or {})
        for key in KEYS:
            if getattr(user, key):
                data[key] = getattr(user, key)
        user.data = data
        user.save(update_fields=["data"])


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0003_user_webhook_columns"),
    ]

    operations = [
        migrations.RunPython(to_columns, to_data),
    ]
