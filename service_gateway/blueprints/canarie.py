"""The CANARIE service API: /info, /<svc>/info, /<svc>/stats and the link routes; public, HTML unless JSON is asked."""
from __future__ import annotations

from typing import Any

from flask import (Blueprint, Response, current_app, jsonify, make_response, redirect, render_template_string,
                   request, url_for)
from flask.blueprints import BlueprintSetupState

from .. import canarie, jobs
from ..canarie import LINK_TITLES, LINKS, CanarieConfig
from . import runtime

bp = Blueprint("canarie", __name__)

#: One small page for every route; Flask autoescapes templates given as strings.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 50rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
th, td { text-align: left; vertical-align: top; padding: .35rem .6rem; border-bottom: 1px solid #ddd; }
th { width: 12rem; font-weight: 600; }
nav a { margin-right: .8rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{%- if message %}
<p>{{ message }}</p>
{%- endif %}
{%- for section in sections %}
{%- if section.heading %}
<h2>{% if section.href %}<a href="{{ section.href }}">{{ section.heading }}</a>
{%- else %}{{ section.heading }}{% endif %}</h2>
{%- endif %}
<table>
{%- for key, value in section.rows %}
<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{%- endfor %}
</table>
{%- endfor %}
{%- if nav %}
<nav>{% for label, href in nav %}<a href="{{ href }}">{{ label }}</a>{% endfor %}</nav>
{%- endif %}
</body>
</html>
"""


@bp.record_once
def _load_config(state: BlueprintSetupState) -> None:
    """Validate the settings file's [canarie] table once, when the app is made."""
    rt = state.app.extensions["service_gateway"]
    origin = f"{rt.settings.config}: [canarie]" if rt.settings.config else "[canarie]"
    state.app.extensions["canarie"] = canarie.load_config(rt.settings.extra.get("canarie"), rt.services, origin)


def _config() -> CanarieConfig:
    return current_app.extensions["canarie"]


def wants_json() -> bool:
    """True when the caller prefers JSON to HTML (``Accept: application/json``); HTML is the default."""
    accept = request.accept_mimetypes
    return (accept.best_match(["text/html", "application/json"]) == "application/json"
            and accept["application/json"] > accept["text/html"])


def _text(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _rows(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, _text(value)) for key, value in body.items() if key not in ("services", "service")]


def _nav(svc: str) -> list[tuple[str, str]]:
    pages = [("info", url_for("canarie.info", svc=svc)), ("stats", url_for("canarie.stats", svc=svc))]
    return pages + [(page, url_for("canarie.link", svc=svc, page=page)) for page in LINKS]


def _answer(body: dict[str, Any], title: str, *, sections: list[dict[str, Any]] | None = None,
            message: str = "", nav: list[tuple[str, str]] | None = None) -> Response:
    if wants_json():
        response = jsonify(body)
    else:
        html = render_template_string(PAGE, title=title, message=message, nav=nav or [],
                                      sections=sections if sections is not None else [{"rows": _rows(body)}])
        response = make_response(html)
        response.mimetype = "text/html"
    response.vary.add("Accept")
    return response


@bp.get("/info")
def platform_info():
    """The gateway's CANARIE info, with every service's."""
    rt = runtime()
    body = canarie.platform_info(rt, _config())
    sections = [{"rows": _rows(body)}]
    sections += [{"heading": item["service"], "href": url_for("canarie.info", svc=item["service"]),
                  "rows": _rows(item)} for item in body["services"]]
    return _answer(body, f"{body['name']}: info", sections=sections)


@bp.get("/<svc>/info")
def info(svc: str):
    """A service's CANARIE info: name, synopsis, version, institution, ..., activeWorkers."""
    rt = runtime()
    spec = jobs.get_service(rt, svc)
    body = canarie.service_info(_config(), spec, canarie.workers_online(rt))
    return _answer(body, f"{body['name']}: info", nav=_nav(svc))


@bp.get("/<svc>/stats")
def stats(svc: str):
    """A service's invocations since lastReset; 503 when no live worker consumes its queue."""
    rt = runtime()
    spec = jobs.get_service(rt, svc)
    body = canarie.service_stats(rt, _config(), spec)
    return _answer(body, f"{svc}: stats", nav=_nav(svc))


@bp.get(f"/<svc>/<any({', '.join(LINKS)}):page>")
def link(svc: str, page: str):
    """Redirect (302) to the page's configured URL; without one, a page that says so (source: 204)."""
    rt = runtime()
    jobs.get_service(rt, svc)
    url = _config().link(svc, page)
    if url:
        # A path on this gateway keeps the prefix it is mounted under (SG_PROXY_HOPS, X-Forwarded-Prefix).
        return redirect(request.script_root + url if url.startswith("/") else url, 302)
    if page == "source":
        response = Response(status=204)
        response.headers.remove("Content-Type")
        return response
    message = f"No {LINK_TITLES[page].lower()} URL is published for this service."
    body = {"service": svc, "page": page, "url": None, "description": message}
    return _answer(body, f"{svc}: {LINK_TITLES[page]}", sections=[], message=message, nav=_nav(svc))
