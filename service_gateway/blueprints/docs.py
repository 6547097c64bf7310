"""Public API docs: GET /openapi.json (generated from the live app) and GET /docs (Swagger UI, offline)."""
from __future__ import annotations

from html import escape
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory, url_for

from ..errors import APIError
from ..openapi import Route, documented, json_response, spec_for

bp = Blueprint("docs", __name__)

#: Swagger UI's static build as flask-swagger-ui ships it: served from the package, never from a CDN.
SWAGGER_UI_DIR = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
#: The files the page loads (an allow-list: nothing else of the package is served).
ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
          "favicon-32x32.png", "favicon-16x16.png")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>Service Gateway API</title>
  <link rel="stylesheet" type="text/css" href="{css}">
  <link rel="stylesheet" type="text/css" href="{index_css}">
  <link rel="icon" type="image/png" href="{icon32}" sizes="32x32">
  <link rel="icon" type="image/png" href="{icon16}" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{bundle}"></script>
  <script src="{preset}"></script>
  <script>
    window.onload = function () {{
      window.ui = SwaggerUIBundle({{
        url: "{spec}",
        dom_id: "#swagger-ui",
        deepLinking: true,
        persistAuthorization: true,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        plugins: [SwaggerUIBundle.plugins.DownloadUrl],
        layout: "StandaloneLayout",
        validatorUrl: null
      }});
    }};
  </script>
</body>
</html>
"""


@bp.get("/openapi.json")
@documented(Route("This API's OpenAPI 3.1 document.", "docs", backend=False, ok={
    "200": json_response("The OpenAPI document.", {"type": "object", "required": ["openapi", "paths"]})}))
def openapi_json():
    spec = dict(spec_for(current_app))
    # The one per-request part: where this gateway is mounted (behind a proxy prefix, say).
    spec["servers"] = [{"url": request.script_root or "/"}]
    return jsonify(spec)


@bp.get("/docs")
@documented(Route("Interactive API docs (Swagger UI) for /openapi.json.", "docs", backend=False, ok={
    "200": {"description": "The HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}}))
def docs():
    def asset(name: str) -> str:
        return escape(url_for("docs.asset", name=name), quote=True)
    html = PAGE.format(css=asset("swagger-ui.css"), index_css=asset("index.css"), icon32=asset("favicon-32x32.png"),
                       icon16=asset("favicon-16x16.png"), bundle=asset("swagger-ui-bundle.js"),
                       preset=asset("swagger-ui-standalone-preset.js"),
                       spec=escape(url_for("docs.openapi_json"), quote=True))
    return Response(html, mimetype="text/html")


@bp.get("/docs/<name>")
@documented(Route("A static file of the docs page (Swagger UI's build).", "docs", backend=False,
                 path_schemas={"name": {"enum": list(ASSETS)}},
                 ok={"200": {"description": "The file.", "content": {"*/*": {"schema": {}}}}}))
def asset(name: str):
    if name not in ASSETS:
        raise APIError(201, f"no docs asset {name!r}; the page loads {', '.join(ASSETS)}")
    return send_from_directory(SWAGGER_UI_DIR, name, max_age=86400)
