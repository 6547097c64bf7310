"""Probes: /health (the process is up) and /ready (its dependencies answer)."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify

from ..auth import require_auth

from ..errors import Unavailable
from ..jobs import BACKEND_ERRORS, read_meta
from . import runtime

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    return jsonify({"status": "ok"})


@bp.get("/metrics")
@require_auth
def metrics():
    """Prometheus exposition; needs an admin token (Prometheus sends it: ``authorization: credentials``)."""
    g.identity.require_admin()
    from prometheus_client import CONTENT_TYPE_LATEST

    from .. import metrics as sg_metrics
    return Response(sg_metrics.exposition(current_app), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/infrastructure")
@require_auth
def infrastructure():
    """Per queue: backlog, running, workers, throughput, mean duration and the workers recommended."""
    rt = runtime()
    from ..infrastructure import report
    try:
        return jsonify(report(rt))
    except BACKEND_ERRORS as exc:
        raise Unavailable("the broker", rt.settings.retry_after_s) from exc


@bp.get("/ready")
def ready():
    """Check broker, result backend and job store; 503 names what is down."""
    rt = runtime()
    checks: dict[str, str] = {}
    try:
        rt.store.ping()
        checks["job_store"] = "ok"
    except Unavailable:
        checks["job_store"] = "unreachable"
    try:
        read_meta(rt, "00000000-0000-0000-0000-000000000000")
        checks["result_backend"] = "ok"
    except Unavailable:
        checks["result_backend"] = "unreachable"
    try:
        with rt.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except BACKEND_ERRORS:
        checks["broker"] = "unreachable"
    down = sorted(k for k, v in checks.items() if v != "ok")
    if down:
        error = Unavailable(" and ".join(d.replace("_", " ") for d in down), rt.settings.retry_after_s)
        body = error.to_dict()
        body["checks"] = checks
        response = jsonify(body)
        response.status_code = 503
        response.headers.update(error.headers)
        return response
    return jsonify({"status": "ready", "checks": checks})
