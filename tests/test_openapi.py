"""GET /openapi.json describes the app that serves it; GET /docs is a working offline Swagger UI."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

from service_gateway.errors import CODES
from service_gateway.openapi import IMPLICIT_METHODS

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/openapi.json")         # public: no token
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_spec_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_every_rule_of_the_url_map_is_in_the_spec_with_its_methods(app, spec):
    rules = [r for r in app.url_map.iter_rules() if r.endpoint != "static"]
    assert rules
    methods: dict[str, set[str]] = {}         # several rules may share a path (one per method)
    for rule in rules:
        path = openapi_path(rule.rule)
        assert path in spec["paths"], path
        methods.setdefault(path, set()).update(set(rule.methods) - IMPLICIT_METHODS)
        for method in set(rule.methods) - IMPLICIT_METHODS:
            operation = spec["paths"][path][method.lower()]
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(rule.arguments), path
    for path, expected in methods.items():
        assert {m.upper() for m in spec["paths"][path] if m in HTTP_METHODS} == expected, path


def test_each_service_has_its_own_paths_with_its_parameter_schema(app, spec):
    services = app.extensions["service_gateway"].services
    schemas = spec["components"]["schemas"]
    for name, service in services.items():
        assert schemas[f"{name}.parameters"] == service.parameters
        body = spec["paths"][f"/{name}/process"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["params"] == {"$ref": f"#/components/schemas/{name}.parameters"}
        form = spec["paths"][f"/{name}/annotate"]["post"]["requestBody"]["content"][
            "application/x-www-form-urlencoded"]["schema"]
        assert set(service.properties) <= set(form["properties"])
        for route in ("status", "cancel", "annotate/{storage_doc_id}"):
            assert f"/{name}/{route}" in spec["paths"]
        if service.result_schema:
            result = {k: v for k, v in service.result_schema.items() if k != "$schema"}
            assert schemas[f"{name}.result"] == result
            status = spec["paths"][f"/{name}/status"]["get"]["responses"]["200"]
            assert {"$ref": f"#/components/schemas/{name}.result"} in status["content"]["application/json"][
                "schema"]["properties"]["result"]["anyOf"]


def test_errors_use_the_error_shape_and_auth_routes_need_bearer(spec):
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "code", "error", "description"}
    assert set(error["properties"]["code"]["enum"]) == set(CODES)
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["$ref"] == "#/components/schemas/Error", (path, method, status)
                    assert all(CODES[c][0] == int(status) for c in schema["properties"]["code"]["enum"])
            if operation["security"]:
                assert {"bearerAuth": []} in operation["security"] and "401" in operation["responses"], path
            elif "401" in operation["responses"]:        # e.g. bad credentials at login, never "no token"
                codes = operation["responses"]["401"]["content"]["application/json"]["schema"]["properties"]["code"]
                assert 220 not in codes["enum"], path
    for path in ("/health", "/ready", "/openapi.json", "/docs", "/docs/{name}", "/auth/access-token"):
        assert spec["paths"][path][next(iter(spec["paths"][path]))]["security"] == [], path


def test_documented_security_matches_what_routes_do_without_a_token(client, spec):
    for path, item in spec["paths"].items():
        if "{" in path:
            continue
        for method, operation in item.items():
            response = client.open(path, method=method.upper())
            response.close()
            if operation["security"]:
                assert response.status_code == 401 and response.get_json()["code"] == 220, (method, path)
            else:
                assert response.status_code != 401, (method, path)


def test_spec_is_built_once_per_app(app, client):
    from service_gateway.openapi import spec_for
    client.get("/openapi.json")
    with app.app_context():
        assert spec_for(app) is spec_for(app)


def test_documented_public_routes_answer_without_a_token(client):
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_docs_page_references_the_spec_and_its_assets_load_offline(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert '"/openapi.json"' in html
    parser = _Refs()
    parser.feed(html)
    assert any(u.endswith(".js") for u in parser.urls) and any(u.endswith(".css") for u in parser.urls)
    for url in parser.urls:
        assert url.startswith("/"), f"{url}: the page must not load anything from another host"
        with client.get(url) as asset:        # send_file's open file is closed with the response
            assert asset.status_code == 200 and asset.data, url
    with client.get("/docs/swagger-ui-bundle.js") as bundle:
        assert bundle.mimetype in ("text/javascript", "application/javascript")
    missing = client.get("/docs/../setup.cfg")
    assert missing.status_code == 404 and missing.get_json()["code"] == 201
