"""The seed-compatible per-service routes: annotate, process, status, cancel."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request, url_for

from .. import jobs
from ..auth import require_auth
from ..errors import APIError
from . import runtime

bp = Blueprint("annotate", __name__)

#: Submit arguments that are not service parameters.
RESERVED = ("doc_url", "ann_doc_id", "callback_url", "callback_progress")


def _accepted(job_id: str, service: str):
    response = jsonify({"uuid": job_id})
    response.status_code = 202
    response.headers["Location"] = url_for("annotate.status", svc=service, uuid=job_id)
    return response


@bp.post("/<svc>/annotate")
@bp.post("/<svc>/annotate/<storage_doc_id>")
@require_auth
def annotate(svc: str, storage_doc_id: str | None = None):
    """Submit from form/query args; args the schema names are parameters, the others go to ``misc``."""
    rt = runtime()
    spec = jobs.get_service(rt, svc)
    args = {**request.args.to_dict(), **request.form.to_dict()}
    doc_url = args.get("doc_url")
    if storage_doc_id is not None:
        template = rt.settings.storage_doc_url
        if not template:
            raise APIError(211, "this gateway has no SG_STORAGE_DOC_URL, so storage document ids "
                                "cannot be resolved; pass doc_url instead")
        doc_url = template.format(storage_doc_id=_quote(storage_doc_id))
    extra = {k: v for k, v in args.items() if k not in RESERVED}
    params = spec.coerce({k: v for k, v in extra.items() if k in spec.properties})
    misc = {k: v for k, v in extra.items() if k not in spec.properties}
    job_id = jobs.submit(rt, g.identity, spec, doc_url=doc_url, params=params, misc=misc,
                         ann_doc_id=args.get("ann_doc_id"), callback_url=args.get("callback_url"),
                         idempotency_key=request.headers.get("Idempotency-Key"),
                         callback_progress=_flag(args.get("callback_progress")))
    return _accepted(job_id, svc)


def _flag(value: str | None) -> bool:
    """A form/query boolean (``callback_progress=true``); anything unclear is refused, not guessed."""
    if value is None or value in ("false", "0", "no", "off"):
        return False
    if value in ("true", "1", "yes", "on"):
        return True
    raise APIError(204, "callback_progress: must be true or false")


def _quote(value: str) -> str:
    from urllib.parse import quote
    return quote(value, safe="")


@bp.post("/<svc>/process")
@require_auth
def process(svc: str):
    """Submit from a JSON body: ``{"doc_url", "params": {...}, "misc": {...}, "ann_doc_id", "callback_url",
    "callback_progress"}``."""
    rt = runtime()
    spec = jobs.get_service(rt, svc)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(200, "the body must be a JSON object: "
                            '{"doc_url": "...", "params": {...}}; send Content-Type: application/json')
    unknown = sorted(set(body) - {*RESERVED, "params", "misc"})
    if unknown:
        raise APIError(204, f"unknown field(s) {', '.join(unknown)}: service parameters go in \"params\", "
                            "free-form values in \"misc\"")
    params, misc = body.get("params", {}), body.get("misc", {})
    for name, value in (("params", params), ("misc", misc)):
        if not isinstance(value, dict):
            raise APIError(204, f"{name} must be a JSON object")
    for name in ("ann_doc_id", "callback_url"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise APIError(204, f"{name} must be a string")
    if not isinstance(body.get("callback_progress", False), bool):
        raise APIError(204, "callback_progress must be true or false")
    doc_url = body.get("doc_url")
    if doc_url is not None and not isinstance(doc_url, str):
        raise APIError(207, "doc_url must be a string")
    job_id = jobs.submit(rt, g.identity, spec, doc_url=doc_url, params=params, misc=misc,
                         ann_doc_id=body.get("ann_doc_id"), callback_url=body.get("callback_url"),
                         idempotency_key=request.headers.get("Idempotency-Key"),
                         callback_progress=body.get("callback_progress", False))
    return _accepted(job_id, svc)


@bp.get("/<svc>/status")
@require_auth
def status(svc: str):
    rt = runtime()
    jobs.get_service(rt, svc)
    job = jobs.find_job(rt, g.identity, request.args.get("uuid"), service=svc)
    return jsonify(jobs.render(jobs.status(rt, job, request.url_root), request))


@bp.route("/<svc>/cancel", methods=["POST", "GET"])
@require_auth
def cancel(svc: str):
    """Cancel; GET is accepted as in the original gateway."""
    rt = runtime()
    jobs.get_service(rt, svc)
    job = jobs.find_job(rt, g.identity, request.values.get("uuid"), service=svc)
    return _cancelled(rt, job)


def _cancelled(rt, job) -> Any:
    job = jobs.cancel(rt, job)
    response = jsonify(jobs.status(rt, job, request.url_root))
    response.status_code = 202
    return response
