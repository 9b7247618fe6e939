"""The OpenAPI document describes every route, and the service keeps to it under generated input."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from api.app import create_app
from tests.helpers import TOKEN, RedisServer, make_settings


@pytest.fixture(scope="module")
def wsgi_app(tmp_path_factory, simulator):
    """The real app on a private Redis with no worker: generated jobs stay queued and touch nothing shared."""
    server = RedisServer(tmp_path_factory.mktemp("openapi-redis")).start()
    yield create_app(make_settings(server.url, simulator.url))
    server.stop()


def test_every_route_is_in_the_document(wsgi_app):
    client = wsgi_app.test_client()
    document = client.get("/openapi.json").get_json()
    routes = {rule.rule.replace("<job_id>", "{jobId}") for rule in wsgi_app.url_map.iter_rules()
              if rule.endpoint != "static" and not rule.endpoint.startswith("pages.")}  # pages for people

    assert routes - {"/openapi.json"} == set(document["paths"])
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert "200" in operation["responses"] or "202" in operation["responses"], path
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for page in ("/docs", "/docs/swagger-ui-bundle.js", "/docs/docs.js", "/ui/", "/ui/app.js", "/ui/style.css"):
        assert client.get(page).status_code == 200, page
    assert client.get("/docs/index.j2").status_code == 404  # only the files the page uses are served


def test_the_document_lists_exactly_the_query_parameters_each_route_takes(wsgi_app):
    """The service refuses any other (api/params.py), so the two must agree."""
    document = wsgi_app.test_client().get("/openapi.json").get_json()

    for rule in wsgi_app.url_map.iter_rules():
        path = rule.rule.replace("<job_id>", "{jobId}")
        if path not in document["paths"]:
            continue
        accepted = getattr(wsgi_app.view_functions[rule.endpoint], "query_parameters", frozenset())
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path][method.lower()]
            documented = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
            assert documented == accepted, (method, path)
            assert "400" in operation["responses"], (method, path)


def test_generated_requests_get_no_5xx_and_answers_that_keep_to_the_document(wsgi_app):
    """Bounded: 40 generated requests per operation, derandomized so a failure repeats."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", wsgi_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def keeps_to_the_document(case):
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     response_schema_conformance])

        keeps_to_the_document()
