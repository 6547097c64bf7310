"""A small web page for people: GET /ui (jobs with live progress, a submit form from each schema, results).

The page and its two static files are public, like /docs: the page asks for a token (pasted, or from
POST /auth/access-token with a client id and secret) and sends it with each API call it makes. No build
step and nothing from another host: plain HTML, one script and one stylesheet from ``assets/ui/``
(not the app's ``static/`` folder, which would add Flask's catch-all /static route). Every answer of
this blueprint carries a Content-Security-Policy that allows this origin only and no inline script,
so the page works only through ui.js, which builds the DOM with textContent (no innerHTML). docs/ui.md
describes it.
"""
from __future__ import annotations

from functools import lru_cache
from html import escape
from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory, url_for

from .. import __version__
from ..errors import APIError
from ..openapi import Route, documented

bp = Blueprint("ui", __name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "ui"
#: The files the page loads (an allow-list: nothing else of the folder is served).
ASSETS = ("ui.js", "ui.css")

#: Only this origin; no inline script or style, no plugins, no framing, no <base> or form posts elsewhere.
#: ``img-src data:`` is for the empty favicon (so the browser does not ask for /favicon.ico).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


@bp.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@lru_cache(maxsize=1)
def _page_template() -> str:
    return (ASSETS_DIR / "index.html").read_text(encoding="utf-8")


def _asset_url(name: str) -> str:
    # ?v= makes a new release's browsers fetch the new file despite the cache lifetime below.
    return escape(url_for("ui.asset", name=name, v=__version__), quote=True)


@bp.get("/ui")
@documented(Route("A web page for people: your jobs with live progress, a submit form, results and outputs.",
                  "ui", backend=False,
                  description="Public, like /docs: the page asks for a token and sends it with the API calls it "
                              "makes. Answers carry a restrictive Content-Security-Policy (this origin only, no "
                              "inline script). See docs/ui.md.",
                  ok={"200": {"description": "The HTML page.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}}))
def page():
    html = (_page_template()
            .replace("{{css}}", _asset_url("ui.css"))
            .replace("{{js}}", _asset_url("ui.js"))
            .replace("{{api_root}}", escape(request.script_root + "/", quote=True)))
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/ui/static/<name>")
@documented(Route("A static file of the /ui page (its script or stylesheet).", "ui", backend=False,
                  path_schemas={"name": {"enum": list(ASSETS)}},
                  ok={"200": {"description": "The file.", "content": {"*/*": {"schema": {}}}}}))
def asset(name: str):
    if name not in ASSETS:
        raise APIError(201, f"no ui asset {name!r}; the page loads {', '.join(ASSETS)}")
    return send_from_directory(ASSETS_DIR, name, max_age=3600)
