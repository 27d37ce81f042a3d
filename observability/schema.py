"""The plain observability views (`/healthz`, `/readyz`, `/metrics`) as the OpenAPI schema shows
them: DRF views that only document the plain Django views serving them (`common.openapi.document_as`)."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from common.openapi import METRICS_TOKEN, error


class _Unauthenticated(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []


class LivenessSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok"])


class HealthzDoc(_Unauthenticated):
    @extend_schema(operation_id="healthz", tags=["health"], summary="Liveness: the process serves requests",
                   description="Touches no dependency: a database outage never gets a healthy web restarted.",
                   responses={200: LivenessSerializer})
    def get(self, request):
        raise NotImplementedError  # served by observability.health.healthz


class _Check(serializers.Serializer):
    ok = serializers.BooleanField()
    ms = serializers.FloatField()
    error = serializers.CharField(required=False, help_text="`failed`, or `did not answer within N s`; the "
                                                           "exception itself is in the service's log.")


class ReadinessSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    checks = serializers.DictField(child=_Check(), help_text="database, redis, backend (the backend check "
                                                             "adds its name and the number of bots).")
    failed = serializers.ListField(child=serializers.CharField(), required=False,
                                  help_text="The failed checks, when there are any.")
    detail = serializers.CharField(required=False, help_text="With a 503: which checks failed.")


class ReadyzDoc(_Unauthenticated):
    @extend_schema(operation_id="readyz", tags=["health"], summary="Readiness: PostgreSQL, Redis and the bot backend answer",
                   responses={200: ReadinessSerializer,
                              503: OpenApiResponse(ReadinessSerializer, description="A dependency failed "
                                                   "(named in `failed`).")})
    def get(self, request):
        raise NotImplementedError  # served by observability.health.readyz


class MetricsDoc(_Unauthenticated):
    @extend_schema(operation_id="metrics", tags=["health"], summary="Prometheus metrics (text format)",
                   auth=[{METRICS_TOKEN: []}, {}],
                   responses={(200, "text/plain"): OpenApiResponse(str, description="Prometheus text format."),
                              403: error("METRICS_TOKEN is set and the request lacks it, or it is unset and "
                                         "the request does not come directly from loopback.")})
    def get(self, request):
        raise NotImplementedError  # served by observability.metrics.metrics_view
