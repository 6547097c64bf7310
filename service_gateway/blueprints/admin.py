"""Admin routes: clients (the same operations as `sg clients`), pipelines, queues and workers."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from ..auth import require_auth
from ..clients import check_quotas, check_scopes
from ..errors import APIError
from . import runtime

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _admin() -> None:
    g.identity.require_admin()


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(200, "the body must be a JSON object; send Content-Type: application/json")
    return body


@bp.get("/clients")
@require_auth
def list_clients():
    _admin()
    return jsonify({"clients": [c.to_dict() for c in runtime().clients.all()]})


@bp.post("/clients")
@require_auth
def add_client():
    """Create a client: ``{"name", "scopes": [...], "quotas": {...}}``; the secret is in this answer only."""
    _admin()
    rt = runtime()
    body = _json_body()
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise APIError(206, "name is required: a client name of 1-200 characters")
    services = set(rt.services) | rt.pipelines.names()
    created = rt.clients.add(name.strip(), check_scopes(body.get("scopes", []), services),
                             check_quotas(body.get("quotas", {}), services))
    response = jsonify({**created.client.to_dict(), "secret": created.secret})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/clients/<client_id>")
@require_auth
def get_client(client_id: str):
    _admin()
    client = runtime().clients.get(client_id)
    if client is None:
        raise APIError(213, f"no client {client_id!r}")
    return jsonify(client.to_dict())


@bp.patch("/clients/<client_id>")
@require_auth
def update_client(client_id: str):
    """Change ``enabled``, ``scopes`` and/or ``quotas``; disabling revokes the client's tokens at once."""
    _admin()
    rt = runtime()
    body = _json_body()
    unknown = sorted(set(body) - {"enabled", "scopes", "quotas"})
    if unknown:
        raise APIError(204, f"unknown field(s) {', '.join(unknown)}: enabled, scopes and quotas can be changed")
    values = {}
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise APIError(204, "enabled: must be true or false")
        values["enabled"] = body["enabled"]
    if "scopes" in body:
        values["scopes"] = check_scopes(body["scopes"], set(rt.services) | rt.pipelines.names())
    if "quotas" in body:
        values["quotas"] = check_quotas(body["quotas"], set(rt.services) | rt.pipelines.names())
    client = rt.clients.update(client_id, revoke_tokens="enabled" in values, **values)
    return jsonify(client.to_dict())


@bp.post("/clients/<client_id>/rotate-secret")
@require_auth
def rotate_secret(client_id: str):
    """Give the client a new secret (in this answer only); its existing tokens fail at once."""
    _admin()
    rotated = runtime().clients.rotate_secret(client_id)
    response = jsonify({**rotated.client.to_dict(), "secret": rotated.secret})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/jobs/failed")
@require_auth
def failed_jobs():
    """Jobs that ended in FAILURE, newest first (``?service=``, ``?limit=``, ``?cursor=``), for inspection."""
    _admin()
    rt = runtime()
    from .jobs import page_args
    limit, cursor = page_args()
    page, next_cursor = rt.store.list(owner=None, service=request.args.get("service") or None, status="FAILURE",
                                      cursor=cursor, limit=limit)
    return jsonify({"jobs": [{**j.to_dict(), "error": {"code": j.error_code, "message": j.error_message}}
                             for j in page], "next_cursor": next_cursor})


@bp.post("/jobs/<job_id>/requeue")
@require_auth
def requeue_job(job_id: str):
    """Run a FAILURE job again from the start (attempts reset); 409 (code 215) for any other status."""
    _admin()
    rt = runtime()
    from .. import jobs
    job = jobs.find_job(rt, g.identity, job_id)
    requeued = jobs.requeue_failed(rt, job, f"requeued by {g.identity.subject}")
    response = jsonify(jobs.status(rt, requeued, request.url_root))
    response.status_code = 202
    return response


@bp.get("/queues")
@require_auth
def queues():
    """Each queue: messages and consumers from the broker, and the jobs the store has waiting in it."""
    _admin()
    rt = runtime()
    from ..broker import queue_stats
    from ..errors import Unavailable
    from ..jobs import BACKEND_ERRORS
    try:
        stats = queue_stats(rt)
    except BACKEND_ERRORS as exc:
        raise Unavailable("the broker", rt.settings.retry_after_s) from exc
    waiting = rt.store.count_waiting()
    return jsonify({"queues": [{"queue": q, **stats.get(q, {}), "jobs_waiting": waiting.get(q, 0),
                                "services": sorted(s for s, spec in rt.services.items() if spec.queue == q)}
                               for q in rt.queues]})


@bp.post("/queues/<queue>/purge")
@require_auth
def purge_queue(queue: str):
    """Drop every waiting job of a queue: ``{"confirm": "<queue>"}`` is required; the jobs end REVOKED (109)."""
    _admin()
    rt = runtime()
    if queue not in rt.queues:
        raise APIError(202, f"unknown queue {queue!r}; GET /admin/queues lists them")
    body = request.get_json(silent=True) or {}
    if body.get("confirm") != queue:
        raise APIError(206, f"purging drops every waiting job of {queue!r}: send {{\"confirm\": \"{queue}\"}} "
                            "to confirm")
    # The jobs first: a message purged afterwards can no longer start a job that is still PENDING.
    revoked = rt.store.revoke_waiting(queue, f"purged from its queue by {g.identity.subject}")
    from ..jobs import notify_webhook
    for job in revoked:     # no worker will see them: their usage records and webhooks are sent from here
        rt.clients.job_ended(job, lambda uuid: notify_webhook(rt, uuid))
    with rt.celery.connection_for_write() as conn:
        purged = conn.default_channel.queue_purge(queue) or 0
    return jsonify({"queue": queue, "jobs_revoked": len(revoked), "messages_purged": purged})


@bp.get("/workers")
@require_auth
def workers():
    """Workers online (job-store heartbeats): queues, concurrency, last seen, and the jobs they run."""
    _admin()
    rt = runtime()
    online = rt.store.workers_online(within_s=3 * rt.settings.worker_heartbeat_s)
    running = rt.store.in_progress()
    out = []
    for w in online:
        host = w.hostname.split("@", 1)[-1]
        out.append({"hostname": w.hostname, "queues": w.queues.split(","), "concurrency": w.concurrency,
                    "started_at": _iso(w.started_at), "last_seen": _iso(w.last_seen),
                    "active_jobs": [j.uuid for j in running if (j.lease_owner or "").startswith(host + ":")]})
    return jsonify({"workers": out})


@bp.get("/jobs/in-progress")
@require_auth
def in_progress():
    """Every job started and not finished, oldest first, with its worker, lease and attempts."""
    _admin()
    rows = runtime().store.in_progress()
    return jsonify({"jobs": [{**j.to_dict(), "lease_owner": j.lease_owner, "lease_until": _iso(j.lease_until)}
                             for j in rows]})


def _iso(value):
    from ..store import _iso as iso
    return iso(value)


# -- pipelines ------------------------------------------------------------------------------------
@bp.get("/pipelines")
@require_auth
def list_pipelines():
    _admin()
    return jsonify({"pipelines": [p.describe() for p in runtime().pipelines.all()]})


@bp.post("/pipelines")
@require_auth
def add_pipeline():
    """Create a pipeline: ``{"name", "description", "steps": [...]}`` (see docs/pipelines.md); 201."""
    _admin()
    body = _json_body()
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise APIError(206, "name is required: 1-63 of a-z, 0-9, _ and -, starting with a letter")
    spec = runtime().pipelines.save(name, {k: v for k, v in body.items() if k != "name"}, create=True)
    response = jsonify(spec.describe())
    response.status_code = 201
    return response


@bp.get("/pipelines/<name>")
@require_auth
def get_pipeline(name: str):
    _admin()
    spec = runtime().pipelines.get(name)
    if spec is None:
        raise APIError(217, f"no pipeline {name!r}")
    return jsonify(spec.describe())


@bp.put("/pipelines/<name>")
@require_auth
def replace_pipeline(name: str):
    """Replace a pipeline's definition; jobs already submitted keep the definition they started with."""
    _admin()
    body = _json_body()
    if body.get("name", name) != name:
        raise APIError(204, "name: a pipeline cannot be renamed; create the new name and delete the old")
    spec = runtime().pipelines.save(name, {k: v for k, v in body.items() if k != "name"}, create=False)
    return jsonify(spec.describe())


@bp.delete("/pipelines/<name>")
@require_auth
def delete_pipeline(name: str):
    _admin()
    runtime().pipelines.delete(name)
    return "", 204
