"""Job operations behind the routes: submit, status, cancel."""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid as uuidlib
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from kombu.exceptions import OperationalError as BrokerError

from .annotations import is_annotation_result, to_web_annotations
from .auth import Identity
from .celery_app import task_name
from .errors import APIError, Unavailable
from .logs import current_request_id
from .metrics import JOBS_SUBMITTED
from .quotas import add_job_within_quotas
from .runtime import Runtime
from .pipelines import PipelineSpec
from .services import ParameterError, ServiceSpec
from .status import RETRYING, JobStatus
from .store import Job
from .urls import URLRefused, check_doc_url
from .webhooks import check_callback_url

log = logging.getLogger(__name__)

#: Errors of the result backends we support that mean "unreachable", not "bug".
BACKEND_ERRORS: tuple[type[BaseException], ...] = (BrokerError, ConnectionError, TimeoutError, OSError)
try:
    import redis.exceptions
    BACKEND_ERRORS += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
except ImportError:  # pragma: no cover - redis is a dependency, kept optional for slim images
    pass
try:
    import sqlalchemy.exc
    BACKEND_ERRORS += (sqlalchemy.exc.OperationalError,)
except ImportError:  # pragma: no cover
    pass
#: ... and of publishing: a nack or channel error from RabbitMQ too.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = BACKEND_ERRORS
try:
    import amqp.exceptions
    PUBLISH_ERRORS += (amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked)
except ImportError:  # pragma: no cover
    pass


def get_service(rt: Runtime, name: str) -> ServiceSpec:
    """The service or pipeline named ``name``; 404 (code 202) when there is none."""
    spec = rt.services.get(name)
    if spec is None and name:
        spec = rt.pipelines.get(name)
    if spec is None:
        raise APIError(202, f"unknown service {name!r}; GET /services lists the services and pipelines")
    return spec


def submit(rt: Runtime, identity: Identity, spec: ServiceSpec, *, doc_url: str | None,
           params: dict[str, Any], misc: dict[str, Any], ann_doc_id: str | None = None,
           callback_url: str | None = None, idempotency_key: str | None = None,
           callback_progress: bool = False) -> str:
    """Validate, record and enqueue a job; return its uuid.

    The record is committed before the task is published (a worker must find it), and removed
    again if the broker does not confirm the task, so a 503 leaves nothing behind. With an
    ``idempotency_key`` seen before (same caller, same request, within SG_IDEMPOTENCY_TTL_S)
    the first job's uuid is returned and nothing new is recorded or published.
    """
    settings = rt.settings
    identity.require(spec.name)
    if not doc_url:
        raise APIError(206, "doc_url is required: the URL of the media document to process")
    try:
        check_doc_url(doc_url, file_roots=settings.file_roots, allow_private=settings.allow_private_urls)
    except URLRefused as exc:
        raise APIError(207, f"doc_url {exc}") from None
    if callback_url:
        try:
            check_callback_url(callback_url, settings.allow_private_urls)
        except URLRefused as exc:
            raise APIError(204, f"callback_url {exc}") from None
    if callback_progress and not callback_url:
        raise APIError(204, "callback_progress: progress deliveries go to callback_url; give one")
    if ann_doc_id and not settings.annotation_storage_url:
        raise APIError(211, "ann_doc_id was given but this gateway has no SG_ANNOTATION_STORAGE_URL, so the "
                            "annotations could not be stored; leave ann_doc_id out or ask the operator")
    try:
        params = spec.validate(params)
    except ParameterError as exc:
        raise APIError(206 if exc.missing else 204, f"invalid parameter {exc}") from None

    job_id = str(uuidlib.uuid4())
    row = dict(uuid=job_id, owner=identity.subject, service=spec.name, queue=spec.queue,
               status=JobStatus.PENDING.value, doc_url=doc_url, params=params, misc=misc, ann_doc_id=ann_doc_id,
               callback_url=callback_url, progress=0, cancel_requested=False)
    if callback_progress:
        row["callback_progress"] = True
    is_pipeline = isinstance(spec, PipelineSpec)
    if is_pipeline:
        if ann_doc_id:
            raise APIError(204, "ann_doc_id: a pipeline's steps are not stored as annotations; submit the "
                                "service itself with ann_doc_id")
        if callback_progress:
            raise APIError(204, "callback_progress: a pipeline sends only its final status; follow its "
                                "progress with GET /jobs/<uuid>/events")
        row["pipeline"] = spec.snapshot(params)
    idem = None
    if idempotency_key is not None:
        idem = (_check_idempotency_key(idempotency_key), request_hash(row), settings.idempotency_ttl_s)
    recorded = add_job_within_quotas(rt.store, identity.quotas, row, idem)
    if recorded != job_id:
        log.info("Idempotency-Key seen before: same job returned", extra={"job_id": recorded})
        return recorded
    try:
        if is_pipeline:
            from .pipelines import start
            start(rt, Job(**{**row, "created_at": None}))
        else:
            publish(rt, row)
    except Unavailable:
        try:
            rt.store.remove(job_id)
        except Unavailable:
            log.error("could not withdraw unpublished job", extra={"job_id": job_id})
        raise
    JOBS_SUBMITTED.labels(spec.name).inc()
    log.info("job accepted for %s", spec.name, extra={"job_id": job_id})
    return job_id


def task_payload(job: Job | dict[str, Any]) -> dict[str, Any]:
    """The task's one argument: plain JSON rebuilt from the job record (submit, retry and requeue alike)."""
    get = job.get if isinstance(job, dict) else lambda k: getattr(job, k, None)
    payload = {"job_id": get("uuid"), "service": get("service"), "doc_url": get("doc_url"),
               "params": get("params") or {}, "misc": get("misc") or {}, "ann_doc_id": get("ann_doc_id"),
               "callback_url": get("callback_url"), "request_id": current_request_id.get()}
    parent = get("parent_uuid")
    if parent:
        # A pipeline's step: which pipeline to advance when it ends, and the earlier output it reads.
        # Only rows the pipeline made have a parent, so a client's misc can never name an input.
        payload["pipeline"] = parent
        if payload["misc"].get("input"):
            payload["input"] = payload["misc"]["input"]
    return payload


def publish(rt: Runtime, job: Job | dict[str, Any], countdown_s: float | None = None) -> None:
    """Send a job's task to its queue; the broker confirms it (RabbitMQ) or 503 is raised.

    Raises:
        Unavailable: the broker did not take the task.
    """
    payload = task_payload(job)
    try:
        # ignore_result: states are read with backend.get_task_meta, never AsyncResult.get, so the
        # Redis backend need not SUBSCRIBE to the result channel on every submit.
        rt.celery.send_task(task_name(payload["service"]), args=[payload], task_id=payload["job_id"],
                            queue=rt.services[payload["service"]].queue, countdown=countdown_s,
                            ignore_result=True,
                            # What Flower and the worker's log show as the task's arguments: the job id
                            # says it all, and Celery's own saferepr of the payload was ~10 % of a submit.
                            argsrepr=f"[{payload['job_id']!r}]", kwargsrepr="{}",
                            retry=True, retry_policy={"max_retries": 1, "interval_start": 0,
                                                      "interval_step": 0.5, "interval_max": 0.5})
    except PUBLISH_ERRORS as exc:
        log.warning("publish failed: %s", exc.__class__.__name__, extra={"job_id": payload["job_id"]})
        raise Unavailable("the broker", rt.settings.retry_after_s) from exc


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _check_idempotency_key(key: str) -> str:
    if not IDEMPOTENCY_KEY.match(key):
        raise APIError(204, "Idempotency-Key: use 1-255 visible ASCII characters (a UUID is a good key)")
    return key


def request_hash(row: dict[str, Any]) -> str:
    """What makes two submits "the same request" for an Idempotency-Key."""
    import hashlib
    import json
    same = {k: row[k] for k in ("service", "doc_url", "params", "misc", "ann_doc_id", "callback_url")}
    if row.get("callback_progress"):
        same["callback_progress"] = True
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


def find_job(rt: Runtime, identity: Identity, job_id: str | None, service: str | None = None) -> Job:
    """Return the caller's job; 404 (code 203) for unknown ids and for other callers' jobs alike."""
    if not job_id:
        raise APIError(206, "uuid is required: the id returned when the job was submitted")
    remembered = rt.succeeded.get(job_id)
    job = remembered[0] if remembered else rt.store.get(job_id) if _looks_like_uuid(job_id) else None
    if job is None or (job.owner != identity.subject and not identity.admin) or (service and job.service != service):
        raise APIError(203, f"no job {job_id!r} is visible to this token")
    # A pipeline's step is the pipeline's: its scope is the pipeline's
    identity.require((job.misc or {}).get("pipeline", job.service) if job.parent_uuid else job.service)
    return job


def _looks_like_uuid(value: str) -> bool:
    try:
        uuidlib.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def read_meta(rt: Runtime, job_id: str) -> dict[str, Any]:
    try:
        return rt.celery.backend.get_task_meta(job_id)
    except BACKEND_ERRORS as exc:
        raise Unavailable("the result backend", rt.settings.retry_after_s) from exc


def status(rt: Runtime, job: Job, url_root: str) -> dict[str, Any]:
    """The status body of DESIGN.md for a job: store for final failures, backend for the rest."""
    state = JobStatus(job.status)
    body: dict[str, Any] = {"uuid": job.uuid, "status": state.value, "progress": job.progress, "result": None}
    if state in (JobStatus.FAILURE, JobStatus.REVOKED):
        body["result"] = {"code": job.error_code, "message": job.error_message}
        return body
    if job.pipeline and job.finished_at is None:
        from .pipelines import running_status
        body.update(running_status(rt, job, read_meta))
        return body
    remembered = rt.succeeded.get(job.uuid) if state is JobStatus.SUCCESS else None
    meta = remembered[1] if remembered else read_meta(rt, job.uuid)
    backend_state = meta.get("status", "PENDING")
    if backend_state == RETRYING:
        backend_state = JobStatus.RETRY.value
    if backend_state == JobStatus.SUCCESS.value:
        if state is JobStatus.SUCCESS and not remembered:
            rt.succeeded.put(job, meta, rt.settings.result_expires_s)
        body.update(status=backend_state, progress=100, result=_absolute_outputs(meta.get("result"), url_root))
    elif state is JobStatus.SUCCESS:
        # The store knows it finished; the backend has forgotten the result.
        body.update(status=JobStatus.EXPIRED.value, progress=100, result={
            "message": "the result has expired (SG_RESULT_EXPIRES_S); GET /jobs/<uuid> still has the record"})
    elif backend_state in ("FAILURE", "REVOKED"):
        # Workers write the store before the backend, so this only shows in a tiny window.
        body.update(status=backend_state, result=_error_dict(meta.get("result")))
    elif backend_state != JobStatus.PENDING.value and isinstance(meta.get("result"), dict):
        running = meta["result"]
        body.update(status=backend_state, progress=int(running.get("current", 0)), result=running)
    return body


class SucceededJobs:
    """Jobs that ended SUCCESS, with their result, remembered by one process for status reads.

    Neither the record nor the result of a SUCCESS job changes until the result expires, so a
    client polling it need not cost a job-store and a result-backend round trip each time (they
    were most of a status request, docs/benchmarks.md B2). An entry lives at most ``ttl_s`` and
    never past its result's expiry, after which the backend is asked again and EXPIRED shows.
    """

    def __init__(self, size: int = 4096, ttl_s: float = 30.0) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._jobs: OrderedDict[str, tuple[float, Job, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, uuid: str) -> tuple[Job, dict[str, Any]] | None:
        with self._lock:
            entry = self._jobs.get(uuid)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._jobs[uuid]
                return None
            return entry[1], entry[2]

    def put(self, job: Job, meta: dict[str, Any], result_expires_s: float) -> None:
        done = meta.get("date_done")
        if isinstance(done, str):
            try:
                done = datetime.fromisoformat(done)
            except ValueError:
                return
        if not isinstance(done, datetime):
            return                   # no completion time: its expiry is unknown, so it is not kept
        if self.ttl_s <= 0:
            return
        if done.tzinfo is None:
            done = done.replace(tzinfo=timezone.utc)
        age_s = (datetime.now(timezone.utc) - done).total_seconds()
        left_s = result_expires_s - age_s if result_expires_s else self.ttl_s
        if left_s <= 1:
            return
        with self._lock:
            self._jobs[job.uuid] = (time.monotonic() + min(self.ttl_s, left_s - 1), job, meta)
            self._jobs.move_to_end(job.uuid)
            while len(self._jobs) > self.size:
                self._jobs.popitem(last=False)


def render(body: dict[str, Any], request) -> dict[str, Any]:
    """Apply the ``format`` query argument: ``json`` (default) or ``webannotation`` (W3C JSON-LD)."""
    fmt = request.args.get("format", "json")
    if fmt == "json":
        return body
    if fmt != "webannotation":
        raise APIError(204, "format: must be json or webannotation")
    if body["status"] == JobStatus.SUCCESS.value and is_annotation_result(body["result"]):
        page_id = request.base_url + f"?uuid={body['uuid']}&format=webannotation"
        body = dict(body, result=to_web_annotations(body["result"], page_id))
    return body


def _error_dict(value: Any) -> dict[str, Any]:
    code = getattr(value, "code", 306)
    return {"code": code, "message": getattr(value, "message", str(value))}


def _absolute_outputs(result: Any, url_root: str) -> Any:
    if isinstance(result, dict) and isinstance(result.get("outputs"), list):
        root = url_root.rstrip("/")
        result = dict(result, outputs=[
            dict(o, url=root + o["url"]) if isinstance(o, dict) and str(o.get("url", "")).startswith("/") else o
            for o in result["outputs"]])
    return result


def notify_webhook(rt: Runtime, job_id: str) -> None:
    """Queue the delivery of a finished job's status to its callback_url (task sg.webhook)."""
    from .runtime import WEBHOOK_QUEUE, WEBHOOK_TASK
    try:
        rt.celery.send_task(task_name(WEBHOOK_TASK), args=[job_id], queue=WEBHOOK_QUEUE, ignore_result=True)
    except PUBLISH_ERRORS as exc:
        log.error("webhook not queued: %s", exc.__class__.__name__, extra={"job_id": job_id})


def requeue_failed(rt: Runtime, job: Job, note: str) -> Job:
    """Make a FAILURE job PENDING again and publish it (an admin's requeue from the failure list)."""
    if not rt.store.requeue_failed(job.uuid, note):
        raise APIError(215, f"job {job.uuid} is {job.status}: only a job that ended in FAILURE can be requeued")
    row = rt.store.get(job.uuid)
    assert row is not None
    try:
        rt.celery.backend.forget(job.uuid)     # the old FAILURE must not show while it waits
    except BACKEND_ERRORS:
        log.warning("could not clear the old result", extra={"job_id": job.uuid})
    publish(rt, row)
    log.info("requeued: %s", note, extra={"job_id": job.uuid})
    return row


def cancel(rt: Runtime, job: Job) -> Job:
    """Ask for the job to stop; a queued job is REVOKED now, a running one within ~1 s."""
    if JobStatus(job.status).is_finished():
        raise APIError(210, f"job {job.uuid} has already finished with status {job.status}")
    if job.pipeline:
        from .pipelines import cancel as cancel_pipeline
        cancel_pipeline(rt, job)
        log.info("pipeline cancelled", extra={"job_id": job.uuid})
        return rt.store.get(job.uuid) or job
    rt.store.request_cancel(job.uuid)
    log.info("cancel requested", extra={"job_id": job.uuid})
    job = rt.store.get(job.uuid) or job
    if job.status == JobStatus.REVOKED.value and job.started_at is None and job.finished_at is not None:
        # Revoked in its queue: no worker will ever see it, so its (empty) usage record is written here.
        rt.clients.job_ended(job, lambda uuid: notify_webhook(rt, uuid))
    return job
