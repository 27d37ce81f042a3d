"""URLconf for tests that need a user-API endpoint guarded by the default `X-API-Key`
authentication, without depending on the real user API: the project's routes plus `/test/whoami`."""
from django.urls import path
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from botmanager import urls as project_urls


class WhoAmI(APIView):
    """Uses the project's default authentication and permission classes (settings.REST_FRAMEWORK)."""

    def get(self, request):
        return Response({"user_id": request.user.id, "email": request.user.email})


class NoCredentials(BaseAuthentication):
    """Finds no credentials (returns None), so DRF raises NotAuthenticated, not AuthenticationFailed."""

    def authenticate(self, request):
        return None


class NeedsAuthentication(APIView):
    authentication_classes = [NoCredentials]
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"reached": True})


class Crashes(APIView):
    """An unexpected error inside a view (what the 500 handler is for)."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        raise RuntimeError("boom: a bug in a view")


urlpatterns = [
    path("test/whoami", WhoAmI.as_view()),
    path("test/not-authenticated", NeedsAuthentication.as_view()),
    path("test/crash", Crashes.as_view()),
    *project_urls.urlpatterns,
]

handler400 = project_urls.handler400
handler403 = project_urls.handler403
handler404 = project_urls.handler404
handler500 = project_urls.handler500
