from rest_framework import serializers

from accounts.models import APIToken, User
from common.strict_fields import StrictCharField, StrictIntegerField

# The largest value the PositiveIntegerField column holds; beyond it PostgreSQL raises (a 500).
MAX_CONCURRENT_BOTS_LIMIT = 2**31 - 1


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


class UserSerializer(serializers.ModelSerializer):
    # Not `format: email` in the schema: the addresses Django's validator took (see UserCreateSerializer).
    email = serializers.CharField(read_only=True)
    image_url = serializers.CharField(read_only=True)  # nor `format: uri`: URLValidator takes non-ASCII
    data = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = ["id", "email", "name", "image_url", "max_concurrent_bots", "data", "created_at"]

    def get_data(self, user: User) -> dict:
        # The admin API (Vexa's shape) shows the webhook URL inside data; the secret never.
        data = dict(user.data or {})
        if user.webhook_url:
            data["webhook_url"] = user.webhook_url
        return data


class UserUpdateSerializer(serializers.Serializer):
    # What Django's URLValidator takes (a subset: a named host of at most 253 characters, no
    # credentials), instead of JSON Schema's `format: uri`, which takes hosts Django refuses.
    openapi_extra = {"properties": {"image_url": {"format": None, "pattern": (
        r"^(https?|ftps?)://([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,3}[A-Za-z][A-Za-z-]{0,59}[A-Za-z]"
        r"(:[0-9]{1,4})?([/?#][^\s\x00]*)?$")}}}

    name = StrictCharField(required=False, allow_blank=True, max_length=255)
    image_url = serializers.URLField(required=False, allow_blank=True, max_length=1024)
    max_concurrent_bots = StrictIntegerField(required=False, min_value=0,
                                                   max_value=MAX_CONCURRENT_BOTS_LIMIT)
    # data.webhook_url is the user's webhook (accounts.webhook.split_data).
    data = serializers.DictField(required=False)

    def validate_data(self, value: dict) -> dict:
        # PostgreSQL's jsonb cannot store the NUL character (\u0000).
        if _contains_nul(value):
            raise serializers.ValidationError("Null characters are not allowed.")
        return value


class UserCreateSerializer(UserUpdateSerializer):
    # What Django's EmailValidator takes (a subset: no quoted local parts, no IDN domains), instead of
    # JSON Schema's `format: email` (RFC 5321: it refuses a local part over 64 characters, Django not).
    openapi_extra = {"properties": {**UserUpdateSerializer.openapi_extra["properties"], "email": {
        "format": None,
        "pattern": (r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z-]{0,61}[A-Za-z]$")}}}

    # The column's length (a longer address was a database error, a 500).
    email = serializers.EmailField(max_length=User._meta.get_field("email").max_length)


class IssuedTokenSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="record.id")
    token = serializers.CharField()
    user_id = serializers.IntegerField(source="record.user_id")
    created_at = serializers.DateTimeField(source="record.created_at")


class TokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = APIToken
        fields = ["id", "user_id", "prefix", "created_at", "revoked_at"]
