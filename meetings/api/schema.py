"""The bot callbacks in the OpenAPI schema: one route and one view, but their bodies differ
(exited needs exit_code, status_change a status), so the schema shows one path per callback."""
from __future__ import annotations

import copy

from meetings.api.serializers import CallbackSerializer
from meetings.lifecycle.statuses import CALLBACK_NAMES

CALLBACK_PATH = "/bots/internal/callback/{name}"


def one_path_per_callback(result, generator, request, public):
    """drf-spectacular postprocessing hook."""
    if CALLBACK_PATH not in result["paths"]:
        return result

    template = result["paths"].pop(CALLBACK_PATH)["post"]
    schemas = result["components"]["schemas"]
    for name in CALLBACK_NAMES:
        operation = copy.deepcopy(template)
        operation["operationId"] = f"bot_callback_{name}"
        operation["parameters"] = [p for p in operation.get("parameters", []) if p["name"] != "name"]
        if not operation["parameters"]:
            del operation["parameters"]
        rules = CallbackSerializer.openapi_by_callback.get(name)
        if rules:
            component = "Callback" + "".join(word.title() for word in name.split("_")) + "Request"
            schemas[component] = {"allOf": [{"$ref": "#/components/schemas/CallbackRequest"}, rules]}
            operation["requestBody"]["content"]["application/json"]["schema"] = {
                "$ref": f"#/components/schemas/{component}"}
        result["paths"][f"/bots/internal/callback/{name}"] = {"post": operation}
    return result
