"""`PUT /user/webhook`: the user's own settings."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import webhook
from accounts.serializers import UserSerializer
from common.strict_fields import StrictBooleanField, StrictCharField


class WebhookSerializer(serializers.Serializer):
    # What accounts.webhook.validate_webhook_url takes, as far as a pattern can say (a subset): an
    # absolute http(s) URL without credentials, of a DNS name whose first label starts with a letter
    # (a number may name a private address).
    openapi_extra = {"properties": {"webhook_url": {"type": "string", "maxLength": 2048, "pattern": (
        r"^https?://[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,2}"
        r"(:[0-9]{1,4})?(/[^\s\x00]*)?$")}}}
    webhook_url = StrictCharField(max_length=2048)
    rotate_secret = StrictBooleanField(required=False, default=False)


class WebhookResponseSerializer(UserSerializer):
    webhook_url = serializers.CharField()
    webhook_secret = serializers.CharField(help_text="Signs the deliveries (X-Webhook-Signature); shown only here.")

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "webhook_url", "webhook_secret"]


class WebhookView(APIView):
    @extend_schema(operation_id="set_webhook", tags=["user"], request=WebhookSerializer,
                   summary="Set the user's webhook URL (and get its signing secret)",
                   responses={200: WebhookResponseSerializer})
    def put(self, request):
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
        body = WebhookSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            url, secret = webhook.set_webhook(request.user, body.validated_data["webhook_url"],
                                              rotate_secret=body.validated_data["rotate_secret"])
        except webhook.InvalidWebhookURL as exc:
            raise ValidationError({"webhook_url": [str(exc)]}) from None
        request.user.refresh_from_db()
        # The secret is returned here, where the user set it up, and nowhere else.
        return Response({**UserSerializer(request.user).data, "webhook_url": url, "webhook_secret": secret})
