"""Live progress: GET /jobs/<uuid>/events streams Server-Sent Events of status and progress changes.

Each event is the status body of the status route (``event: status``, then ``event: result``
once the job has finished, and the stream ends). Event ids are ``STATUS:progress``: a client
reconnecting with ``Last-Event-ID`` gets only what changed since. A stream lives at most
SG_SSE_MAX_S and then asks the client to reconnect (``retry:``), so under gunicorn's gthread
workers no thread is held for long; a comment line every 10 s keeps proxies from closing it.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from flask import Blueprint, Response, g, request, stream_with_context

from .. import jobs
from ..auth import require_auth
from ..errors import Unavailable
from ..status import JobStatus
from . import runtime

bp = Blueprint("events", __name__)

KEEPALIVE_S = 10.0
RECONNECT_MS = 1000


def event_id(body: dict[str, Any]) -> str:
    return f"{body['status']}:{body['progress']}"


def sse(kind: str, body: dict[str, Any]) -> str:
    return f"id: {event_id(body)}\nevent: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


@bp.get("/jobs/<job_id>/events")
@require_auth
def events(job_id: str):
    """Stream the job's status changes as Server-Sent Events until it finishes (or SG_SSE_MAX_S passes)."""
    rt = runtime()
    identity = g.identity
    jobs.find_job(rt, identity, job_id)                 # 404 for unknown ids and other callers' jobs
    url_root = request.url_root
    last = request.headers.get("Last-Event-ID", "")
    settings = rt.settings

    def stream() -> Iterator[str]:
        nonlocal last
        started = beat = time.monotonic()
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            try:
                body = jobs.status(rt, jobs.find_job(rt, identity, job_id), url_root)
            except Unavailable:
                yield ": the result backend or job store is unreachable; retrying\n\n"
                body = None
            if body is not None:
                finished = JobStatus(body["status"]).is_finished()
                if event_id(body) != last or finished:
                    last = event_id(body)
                    yield sse("result" if finished else "status", body)
                    beat = time.monotonic()
                if finished:
                    return
            now = time.monotonic()
            if now - started >= settings.sse_max_s:
                return                                   # the client reconnects with Last-Event-ID
            if now - beat >= KEEPALIVE_S:
                yield ": keep-alive\n\n"
                beat = now
            time.sleep(settings.sse_poll_s)

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
