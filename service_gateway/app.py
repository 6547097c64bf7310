"""The app factory: settings, logging, runtime, auth, error handlers, then blueprints."""
from __future__ import annotations

import sys

from flask import Flask

from . import auth, errors, logs, metrics
from .errors import SettingsError
from .logs import configure_logging
from .runtime import Runtime
from .settings import load_settings


def create_app(test_config: dict | None = None) -> Flask:
    try:
        settings = load_settings(test_config)
        rt = Runtime(settings)
        rt.pipelines        # the settings file's [pipelines.<name>] are checked now, naming the culprit
        app = _make_app(rt)
    except SettingsError as exc:
        if test_config is not None:
            raise
        # One clear line, and exit code 4 so that gunicorn stops instead of respawning workers.
        print(f"service-gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(4) from None
    return app


def _make_app(rt: Runtime) -> Flask:
    settings = rt.settings
    configure_logging(settings.log_format, settings.log_level)

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes)
    app.json.sort_keys = False      # keep bodies in the documented field order
    app.extensions["service_gateway"] = rt
    rt.store.migrate()
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)
    logs.init_app(app)

    auth.init_app(app, settings.secret, settings.jwt_issuer, settings.jwt_audience)
    errors.init_app(app)
    metrics.init_app(app, rt)

    # Blueprints last; canarie checks its [canarie] settings table as it is registered.
    from .blueprints import admin, annotate, auth as auth_routes, canarie, docs, events, jobs, ops, ui, usage
    for blueprint in (ops, auth_routes, admin, usage, jobs, events, annotate, canarie, docs, ui):
        app.register_blueprint(blueprint.bp)
    return app
