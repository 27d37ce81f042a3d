"""`PUT /user/webhook`: the user's own settings."""
from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from . import webhook
from .serializers import UserSerializer


class WebhookSerializer(serializers.Serializer):
    webhook_url = serializers.CharField(max_length=2048)
    rotate_secret = serializers.BooleanField(required=False, default=False)


class WebhookView(APIView):
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
