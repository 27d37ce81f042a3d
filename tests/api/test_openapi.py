"""The served OpenAPI schema (`/openapi.json`) and Swagger UI (`/docs`): valid OpenAPI 3, generated
without a warning, open without credentials, and in step with the URL routes (every API route
documented, every documented path served by the view and method it names)."""
from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RoutePattern
from drf_spectacular.validation import validate_schema

from meetings.lifecycle.statuses import CALLBACK_NAMES

# Routes that are not the API: the Django admin (an HTML console), the JSON 404 of unknown admin API
# paths (a regex catch-all), and the schema and its UI themselves.
NOT_API = {"/openapi.json", "/docs"}
CALLBACK_ROUTE = "/bots/internal/callback/{name}"


@pytest.fixture(scope="module")
def schema():
    response = Client().get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return response.json()


def _api_routes() -> set[str]:
    """Every route of the URLconf as an OpenAPI path template (`<int:id>` → `{id}`)."""
    routes = set()

    def walk(patterns, prefix: str):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                if getattr(entry, "app_name", None) != "admin":  # the Django admin site
                    walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern) and isinstance(entry.pattern, RoutePattern):
                routes.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", prefix + str(entry.pattern)))

    walk(get_resolver().url_patterns, "")
    return routes - NOT_API


def test_the_schema_is_valid_openapi_3(schema):
    validate_schema(schema)  # drf-spectacular's validation against the OpenAPI 3.0 JSON Schema

    assert schema["openapi"].startswith("3.0")


def test_the_schema_generates_without_warnings(tmp_path):
    out = io.StringIO()

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"),
                 stdout=out, stderr=out)

    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.0")


def test_every_api_route_is_documented(schema):
    documented = set(schema["paths"])
    callbacks = {f"/bots/internal/callback/{name}" for name in CALLBACK_NAMES}

    assert callbacks <= documented  # the one callback route, one documented path per callback
    assert _api_routes() == (documented - callbacks) | {CALLBACK_ROUTE}


def test_every_documented_operation_is_served_by_a_view_with_that_method(schema):
    for path, operations in schema["paths"].items():
        view = resolve(re.sub(r"\{\w+\}", "1", path)).func
        assert hasattr(view, "cls"), f"{path} resolves to {view}, not a documented view"
        for method in operations:
            assert hasattr(view.cls, method), f"{method.upper()} {path}: {view.cls.__name__} has no {method}"


@pytest.mark.parametrize("path,scheme", [("/bots", "userApiKey"), ("/meetings", "userApiKey"),
                                         ("/admin/users", "adminApiKey")])
def test_each_operation_names_the_credential_it_needs(schema, path, scheme):
    for operation in schema["paths"][path].values():
        assert operation["security"] == [{scheme: []}]


def test_the_bot_callbacks_take_an_optional_meeting_token_and_health_none(schema):
    assert schema["paths"]["/bots/internal/callback/joining"]["post"]["security"] == [{"meetingToken": []}, {}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert set(schema["components"]["securitySchemes"]) == {"userApiKey", "adminApiKey", "meetingToken",
                                                             "metricsToken"}
    schemes = schema["components"]["securitySchemes"]
    assert (schemes["userApiKey"]["in"], schemes["userApiKey"]["name"]) == ("header", "X-API-Key")
    assert (schemes["adminApiKey"]["in"], schemes["adminApiKey"]["name"]) == ("header", "X-Admin-API-Key")
    assert (schemes["meetingToken"]["type"], schemes["meetingToken"]["scheme"]) == ("http", "bearer")


def test_every_error_response_is_a_json_detail(schema):
    errors = [(path, method, code, response) for path, operations in schema["paths"].items()
              for method, operation in operations.items()
              for code, response in operation["responses"].items() if code.startswith(("4", "5"))]

    assert errors
    for path, method, code, response in errors:
        ref = response["content"]["application/json"]["schema"]["$ref"]
        assert ref in ("#/components/schemas/Error", "#/components/schemas/ValidationError",
                       "#/components/schemas/Readiness", "#/components/schemas/CursorGone"), (path, method, code, ref)
    assert schema["components"]["schemas"]["CursorGone"]["required"] == ["detail", "oldest_cursor"]
    assert schema["components"]["schemas"]["Error"]["required"] == ["detail"]


def test_the_list_of_meetings_documents_its_filters(schema):
    parameters = {p["name"]: p for p in schema["paths"]["/meetings"]["get"]["parameters"]}

    assert set(parameters) == {"limit", "offset", "status", "platform"}
    assert (parameters["limit"]["schema"]["minimum"], parameters["limit"]["schema"]["maximum"]) == (1, 500)
    assert parameters["limit"]["schema"]["default"] == 100
    assert parameters["offset"]["schema"]["minimum"] == 0
    assert "422" in schema["paths"]["/meetings"]["get"]["responses"]


def test_every_user_api_operation_documents_its_429_with_retry_after_and_no_other_does(schema):
    checked = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            user_api = {"userApiKey": []} in operation.get("security", [])
            limited = operation["responses"].get("429", {})
            if user_api:
                checked.add(f"{method.upper()} {path}")
                assert limited.get("headers", {}).get("Retry-After", {}).get("schema") == {
                    "type": "integer", "minimum": 1}, (method, path)
            else:
                assert not limited, (method, path)
    assert {"POST /bots", "GET /meetings", "GET /events", "PATCH /meetings/{platform}/{native_meeting_id}"} <= checked


def test_the_running_bots_schema_admits_a_scheduled_bot(schema):
    # GET /bots/status lists scheduled bots too: no container yet, normalized status "Scheduled".
    bot = schema["components"]["schemas"]["RunningBot"]["properties"]

    assert bot["container_id"].get("nullable") and bot["container_name"].get("nullable")
    assert "Scheduled" in schema["components"]["schemas"][bot["normalized_status"]["$ref"].split("/")[-1]]["enum"]


def test_swagger_ui_is_served_without_credentials_and_without_a_cdn():
    client = Client()
    page = client.get("/docs")

    assert page.status_code == 200
    html = page.content.decode()
    assert "/openapi.json" in html
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
    assert assets and all(a.startswith("/static/drf_spectacular_sidecar/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
