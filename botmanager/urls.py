from django.contrib import admin
from django.urls import include, path

from . import errors, health, metrics

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view),
    # The admin API (/admin/users, /admin/tokens) is matched before the Django admin (/admin/).
    path("", include("accounts.urls")),
    path("", include("meetings.urls")),
    path("admin/", admin.site.urls),
]

handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.not_found
handler500 = errors.server_error
