"""The hand-written OpenAPI document matches the routes and the server's own input checks."""

from __future__ import annotations

import re

import jsonschema
import openapi_spec_validator

from notifications import urls
from notifications.api.validation import PARSERS
from notifications.schema import OPENAPI

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def routes() -> dict[str, set[str]]:
    """``/api/...`` path (OpenAPI style) → methods, from notifications/urls.py."""
    found = {}
    for pattern in urls.urlpatterns:
        path = "/api/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        found[path] = {m.lower() for m in pattern.callback.api_spec.methods}
    return found


def documented() -> dict[str, set[str]]:
    return {path: {m for m in item if m in HTTP_METHODS} for path, item in OPENAPI["paths"].items()}


def operations():
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_it_documents_every_route_and_only_routes():
    assert routes() == documented()


def test_it_serves_the_document(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    body = response.json()
    assert body["openapi"] == "3.1.0" and body["paths"].keys() == OPENAPI["paths"].keys()
    assert body["servers"] == [{"url": "http://testserver"}]


def test_it_is_a_valid_openapi_31_document():
    openapi_spec_validator.validate(OPENAPI)


def test_its_json_examples_pass_the_server_checks():
    checked = []
    for _, _, operation in operations():
        example = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
        if example is None:
            continue
        PARSERS[operation["operationId"]](example)  # raises InvalidInput when the example is wrong
        checked.append(operation["operationId"])
    assert sorted(checked) == sorted(PARSERS)


def test_its_json_examples_match_their_schemas():
    for path, method, operation in operations():
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if not content:
            continue
        schema = {**content["schema"], "components": OPENAPI["components"]}
        jsonschema.validate(content["example"], schema, cls=jsonschema.Draft202012Validator), (path, method)


def test_it_describes_errors_and_rate_limits_of_keyed_calls():
    for path, _method, operation in operations():
        if operation.get("security") == []:
            continue
        assert "401" in operation["responses"], path
        assert "Retry-After" in operation["responses"]["429"]["headers"], path
