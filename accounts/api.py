"""The admin API (`/admin/...`), guarded by `X-Admin-API-Key`. Views parse, call, serialize."""
from __future__ import annotations

import re

from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.authentication import HasAdminAPIKey
from accounts.models import User
from accounts.serializers import (IssuedTokenSerializer, TokenSerializer, UserCreateSerializer,
                                  UserSerializer, UserUpdateSerializer)
from accounts.webhook import InvalidWebhookURL
from common import errors
from common.openapi import error
from common.strict_fields import MAX_OFFSET


class AdminView(APIView):
    authentication_classes: list = []
    permission_classes = [HasAdminAPIKey]
    # The operator, not a tenant: no per-user rate limit (common/ratelimit.py).
    throttle_classes: list = []


# GET /admin/users: users per page by default, and the most a `limit` gives.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def _non_negative_int(request, name: str, default: int, maximum: int | None = None,
                      largest: int | None = None) -> int:
    """`maximum` caps the value silently; `largest` refuses values above it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() also takes '١٢', ' 5', '5_0' (and '²' passes str.isdigit()).
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise ValidationError({name: [f"must be a whole number, got {raw!r}"]})
    try:
        value = int(raw)
    except ValueError:  # more digits than int() converts
        raise ValidationError({name: [f"must be a whole number, got {raw[:20]!r}..."]})
    if value < 0:
        raise ValidationError({name: ["must be 0 or more"]})
    if largest is not None and value > largest:
        raise ValidationError({name: [f"must be at most {largest}"]})
    return min(value, maximum) if maximum else value


ADMIN = ["admin"]
PAGE = [
    OpenApiParameter("skip", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                     description="Users to skip (in id order)."),
    OpenApiParameter("limit", {"type": "integer", "minimum": 0},
                     description=f"At most this many users (default {DEFAULT_LIMIT}; more than {MAX_LIMIT} counts as "
                                 f"{MAX_LIMIT})."),
]
USER_NOT_FOUND = error("No such user.")


@extend_schema_view(
    get=extend_schema(operation_id="list_users", tags=ADMIN, summary="Users in id order", parameters=PAGE,
                      responses={200: UserSerializer(many=True)}),
    post=extend_schema(operation_id="create_user", tags=ADMIN, request=UserCreateSerializer,
                       summary="Create a user (or find the one with this email)",
                       responses={201: UserSerializer, 200: UserSerializer}),
)
class UsersView(AdminView):
    def get(self, request):
        skip = _non_negative_int(request, "skip", 0, largest=MAX_OFFSET)
        limit = _non_negative_int(request, "limit", DEFAULT_LIMIT, maximum=MAX_LIMIT)
        users = User.objects.order_by("id")[skip : skip + limit]
        return Response(UserSerializer(users, many=True).data)

    def post(self, request):
        body = UserCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        try:
            user, created = services.get_or_create_user(fields.pop("email"), **fields)
        except InvalidWebhookURL as exc:
            raise ValidationError({"data": [str(exc)]}) from None
        return Response(UserSerializer(user).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema_view(
    get=extend_schema(operation_id="get_user", tags=ADMIN, responses={200: UserSerializer, 404: USER_NOT_FOUND}),
    patch=extend_schema(operation_id="update_user", tags=ADMIN, request=UserUpdateSerializer,
                        responses={200: UserSerializer, 404: USER_NOT_FOUND}),
)
class UserDetailView(AdminView):
    def get(self, request, user_id: int):
        return Response(UserSerializer(get_object_or_404(User, pk=user_id)).data)

    def patch(self, request, user_id: int):
        user = get_object_or_404(User, pk=user_id)
        body = UserUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            user = services.update_user(user.pk, body.validated_data)
        except InvalidWebhookURL as exc:
            raise ValidationError({"data": [str(exc)]}) from None
        return Response(UserSerializer(user).data)


@extend_schema_view(get=extend_schema(operation_id="get_user_by_email", tags=ADMIN,
                                      responses={200: UserSerializer, 404: USER_NOT_FOUND}))
class UserByEmailView(AdminView):
    def get(self, request, email: str):
        return Response(UserSerializer(get_object_or_404(User, email__iexact=email)).data)


@extend_schema_view(
    get=extend_schema(operation_id="list_tokens", tags=ADMIN, summary="A user's API tokens (never the token itself)",
                      responses={200: TokenSerializer(many=True), 404: USER_NOT_FOUND}),
    post=extend_schema(operation_id="issue_token", tags=ADMIN, request=None,
                       summary="Issue an API token: the only time it is shown",
                       responses={201: IssuedTokenSerializer, 404: USER_NOT_FOUND}),
)
class UserTokensView(AdminView):
    def get(self, request, user_id: int):
        user = get_object_or_404(User, pk=user_id)
        return Response(TokenSerializer(user.api_tokens.order_by("id"), many=True).data)

    def post(self, request, user_id: int):
        user = get_object_or_404(User, pk=user_id)
        issued = services.issue_token(user)
        return Response(IssuedTokenSerializer(issued).data, status=status.HTTP_201_CREATED)


@extend_schema_view(delete=extend_schema(operation_id="revoke_token", tags=ADMIN, summary="Revoke an API token",
                                         responses={200: TokenSerializer, 404: error("No such token.")}))
class TokenDetailView(AdminView):
    def delete(self, request, token_id: int):
        record = services.revoke_token(token_id)
        if record is None:
            return Response({"detail": f"Token {token_id} not found."}, status=status.HTTP_404_NOT_FOUND)
        return Response(TokenSerializer(record).data)


@csrf_exempt
def unknown_admin_path(request, rest: str = ""):
    """Any other path under /admin/users or /admin/tokens: a JSON 404, not the Django admin's
    login redirect (the Django admin is mounted at /admin/ and would catch it)."""
    return errors.not_found(request)
