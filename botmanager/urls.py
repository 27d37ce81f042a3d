from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from common import errors, openapi
from observability import health, metrics, schema

urlpatterns = [
    path("healthz", openapi.document_as(schema.HealthzDoc, health.healthz)),
    path("readyz", openapi.document_as(schema.ReadyzDoc, health.readyz)),
    path("metrics", openapi.document_as(schema.MetricsDoc, metrics.metrics_view)),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi")),
    # The admin API (/admin/users, /admin/tokens) is matched before the Django admin (/admin/).
    path("", include("accounts.urls")),
    path("", include("meetings.urls")),
    path("", include("webhooks.urls")),
    path("admin/", admin.site.urls),
]

handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.not_found
handler500 = errors.server_error
