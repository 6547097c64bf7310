"""Generic routes: the service registry, the caller's jobs, cancel, output downloads."""
from __future__ import annotations

import mimetypes
from datetime import datetime, timezone

from flask import Blueprint, g, jsonify, request, send_file

from .. import jobs
from ..auth import require_auth
from ..errors import APIError
from ..status import JobStatus
from ..storage import LocalStorage
from . import runtime
from .annotate import _cancelled

bp = Blueprint("jobs", __name__)

MAX_PAGE = 200


@bp.get("/services")
@require_auth
def services():
    rt = runtime()
    online = rt.store.workers_online(within_s=3 * rt.settings.worker_heartbeat_s)
    items = []
    for spec in rt.services.values():
        item = spec.describe()
        item["workers_online"] = sum(w.concurrency for w in online if spec.queue in w.queues.split(","))
        items.append(item)
    for spec in rt.pipelines.all():
        items.append(spec.describe())
    return jsonify({"services": items})


@bp.get("/jobs")
@require_auth
def list_jobs():
    rt = runtime()
    args = request.args
    status = args.get("status")
    if status and status not in JobStatus.__members__:
        raise APIError(204, f"status: must be one of {', '.join(JobStatus.__members__)}")
    service = args.get("service")
    if service:
        jobs.get_service(rt, service)
    limit, cursor = page_args()
    sort = args.get("sort", "-created_at")
    if sort not in ("created_at", "-created_at"):
        raise APIError(204, "sort: must be -created_at (newest first, the default) or created_at (oldest first)")
    page, next_cursor = rt.store.list(
        owner=None if g.identity.admin and args.get("all") == "true" else g.identity.subject,
        service=service, status=status, since=_time_arg("since"), until=_time_arg("until"),
        cursor=cursor, limit=limit, oldest_first=sort == "created_at")
    return jsonify({"jobs": [j.to_dict() for j in page], "next_cursor": next_cursor})


def page_args() -> tuple[int, str | None]:
    """``limit`` (1-200, default 50) and ``cursor`` of a paginated listing."""
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise APIError(204, "limit: must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise APIError(204, f"limit: must be between 1 and {MAX_PAGE}")
    return limit, request.args.get("cursor") or None


def _time_arg(name: str) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise APIError(204, f"{name}: must be an ISO 8601 time, e.g. 2026-11-22T10:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@bp.get("/jobs/<job_id>")
@require_auth
def get_job(job_id: str):
    rt = runtime()
    job = jobs.find_job(rt, g.identity, job_id)
    body = job.to_dict()
    body.update(jobs.render(jobs.status(rt, job, request.url_root), request))
    return jsonify(body)


@bp.delete("/jobs/<job_id>")
@require_auth
def delete_job(job_id: str):
    rt = runtime()
    return _cancelled(rt, jobs.find_job(rt, g.identity, job_id))


@bp.get("/jobs/<job_id>/deliveries")
@require_auth
def job_deliveries(job_id: str):
    """Every attempt to deliver the job's final status to its callback_url, oldest first."""
    rt = runtime()
    job = jobs.find_job(rt, g.identity, job_id)
    from ..webhooks import deliveries
    return jsonify({"uuid": job.uuid, "callback_url": job.callback_url,
                    "deliveries": [d.to_dict() for d in deliveries(rt.store, job.uuid)]})


@bp.get("/jobs/<job_id>/outputs/<name>")
@require_auth
def output(job_id: str, name: str):
    rt = runtime()
    job = jobs.find_job(rt, g.identity, job_id)
    storage = LocalStorage(rt.settings.output_dir)
    step = request.args.get("step")
    path = storage.path(job.uuid, name) if not step else None
    if path is None and job.pipeline:
        # A pipeline's outputs are its steps': the first step (in the order they ran) that has one
        # of that name, or the step named by ?step= when two steps made files of the same name.
        for child in sorted(rt.store.children(job.uuid), key=lambda c: (c.created_at, c.step or "")):
            if step in (None, child.step):
                path = storage.path(child.uuid, name)
                if path is not None:
                    break
    if path is None:
        raise APIError(208, f"job {job.uuid} has no output named {name!r}" + (f" in step {step!r}" if step else ""))
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return send_file(path, mimetype=content_type, as_attachment=True, download_name=name, conditional=True)
