"""The worker's Celery app: one task per service, logging, heartbeats, schema migration."""
from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from celery import Celery, signals

from service_gateway.celery_app import task_name
from service_gateway.errors import SettingsError
from service_gateway.logs import configure_logging
from service_gateway.runtime import Runtime
from service_gateway.settings import load_settings

from .executor import CeleryBackendSink, Executor, clean_work_dirs, current_events, recover_expired
from .service import Service

log = logging.getLogger("workers")
_app: Celery | None = None


def worker_app() -> Celery:
    """Build (once per process) the Celery app that runs every declared service."""
    global _app
    if _app is None:
        try:
            rt = Runtime(load_settings())
        except SettingsError as exc:
            print(f"service-gateway worker: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if rt.settings.worker_metrics_port:
            _metrics_dir(rt)
        _app = build(rt)
        # The current app for code that asks Celery's default (Flower's /api/task/result builds
        # AsyncResult without an app: without this it reads a disabled backend and answers 503).
        _app.set_default()
    return _app


def build(rt: Runtime) -> Celery:
    app = rt.celery
    settings = rt.settings
    executors: dict[int, Executor] = {}

    def requeue(job: Any, countdown_s: float) -> None:
        from service_gateway.jobs import publish
        publish(rt, job, countdown_s or None)

    def finished(job_id: str) -> None:
        from service_gateway.jobs import notify_webhook
        notify_webhook(rt, job_id)

    def step_finished(pipeline_uuid: str) -> None:
        from service_gateway.pipelines import advance
        advance(rt, pipeline_uuid)

    def executor() -> Executor:
        # One per process: prefork children must not share the parent's connections.
        import os
        pid = os.getpid()
        if pid not in executors:
            executors.clear()
            executors[pid] = Executor(settings, CeleryBackendSink(app.backend, settings.state_write_retry_s),
                                      rt.store, requeue=requeue, on_finished=finished,
                                      on_step_finished=step_finished)
        return executors[pid]

    for spec in rt.services.values():
        if not isinstance(spec, Service) or spec.run is None:
            raise SettingsError(f"SG_SERVICE_MODULES: service {spec.name!r} has no handler")
        # The embedded broker has no fanout, so no events: nothing to send them to.
        _register(app, spec, executor, settings.hard_time_limit_for(spec.name), events=not settings.embedded)
    _register_webhook(app, rt)

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(settings.log_format, settings.log_level)

    @signals.worker_init.connect(weak=False)
    def _migrate(**_: Any) -> None:
        rt.store.migrate()

    def sweep() -> None:
        from service_gateway.pipelines import resume_stalled
        recover_expired(rt.store, settings, CeleryBackendSink(app.backend, 30), requeue, on_finished=finished)
        resume_stalled(rt)

    heartbeat = _Heartbeat(rt, sweep)

    @signals.worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        if settings.worker_metrics_port:
            _serve_metrics(settings.worker_metrics_port)
        queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
        concurrency = getattr(getattr(sender, "controller", None), "concurrency", 1) or 1
        clean_work_dirs(settings.work_dir or None)
        if settings.embedded:
            restore_embedded_messages(rt)
        heartbeat.start(sender.hostname, queues, int(concurrency))

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        heartbeat.stop()

    return app


def _register_webhook(app: Celery, rt: Runtime) -> None:
    """Task sg.webhook: deliver a finished job's status to its callback_url, retried with backoff."""
    import random

    from service_gateway.runtime import WEBHOOK_TASK

    settings = rt.settings

    def webhook(self, job_id: str) -> None:
        from service_gateway import jobs
        from service_gateway.webhooks import deliver, webhook_secret
        job = rt.store.get(job_id)
        if job is None or not job.callback_url or job.finished_at is None:
            return
        client = rt.clients.get(job.owner)
        secret = webhook_secret(settings.secret, job.owner, client.token_version if client else 0)
        body = jobs.status(rt, job, settings.public_url)
        attempt = self.request.retries + 1
        if deliver(rt.store, settings, job_id, job.callback_url, body, secret, attempt):
            return
        if attempt > settings.webhook_retries:
            log.error("webhook given up after %d attempts", attempt, extra={"job_id": job_id})
            return
        ceiling = settings.webhook_backoff_s * 2 ** (attempt - 1)
        raise self.retry(countdown=random.uniform(ceiling / 2, ceiling), max_retries=settings.webhook_retries)

    app.task(name=task_name(WEBHOOK_TASK), bind=True, acks_late=False, ignore_result=True)(webhook)


def _register(app: Celery, spec: Service, executor, hard_time_limit_s: float, events: bool = True) -> None:
    """Register the service's task. The SDK stops a job cleanly (code 108) at its time limit
    (SG_TIME_LIMIT_S / SG_TIME_LIMITS); ``hard_time_limit_s`` (that limit plus SG_TIME_LIMIT_GRACE_S /
    SG_TIME_LIMIT_GRACES) is Celery's kill of the pool process, the backstop for a stuck handler."""
    def run(self, payload: dict[str, Any]) -> None:
        token = current_events.set((lambda kind, fields: self.send_event(kind, **fields)) if events else None)
        try:
            executor().execute(spec, payload)
        finally:
            current_events.reset(token)

    # Acknowledged when it starts: from then on the job store's lease owns the job's recovery
    # (see docs/reliability.md), so no RabbitMQ consumer_timeout can kill a long job's worker.
    app.task(name=task_name(spec.name), bind=True, acks_late=False, ignore_result=True,
             time_limit=hard_time_limit_s or None)(run)


class _Heartbeat:
    """Record the worker as online every SG_WORKER_HEARTBEAT_S seconds, and sweep expired job leases.

    The sweep runs at least every half lease (SG_JOB_LEASE_S / 2), in the worker's main process,
    so a job whose pool process was killed is requeued even while that worker's other processes
    are busy.
    """

    def __init__(self, rt: Runtime, sweep) -> None:
        self.rt = rt
        self.sweep = sweep
        self._halt = threading.Event()
        self.hostname = ""

    def start(self, hostname: str, queues: list[str], concurrency: int) -> None:
        self.hostname = hostname
        started = datetime.now(timezone.utc)

        lease_s = self.rt.settings.job_lease_s
        interval = min(self.rt.settings.worker_heartbeat_s, lease_s / 2)

        def beat() -> None:
            # After the job store was unreachable every lease looks expired: running jobs could not
            # renew theirs. Sweep only once the store has answered for a full lease again, so that
            # live runs renew first and only the truly orphaned jobs are requeued.
            store_ok_since = time.monotonic()
            while True:
                try:
                    self.rt.store.heartbeat(hostname, queues, concurrency, started)
                    if time.monotonic() - store_ok_since >= lease_s:
                        self.sweep()
                except Exception as exc:
                    store_ok_since = time.monotonic() + interval
                    log.warning("heartbeat failed: %s", exc.__class__.__name__)
                if self._halt.wait(interval):
                    return
        threading.Thread(target=beat, name="sg-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._halt.set()
        if self.hostname:
            try:
                self.rt.store.worker_gone(self.hostname)
            except Exception as exc:
                log.warning("could not record worker shutdown: %s", exc.__class__.__name__)


def _metrics_dir(rt: Runtime) -> None:
    """Give this worker's processes a fresh multiprocess metrics directory, before prometheus_client loads.

    The pool processes fork from this one, so they all write there and the main process serves
    the sum (prometheus_client's multiprocess mode).
    """
    import os
    import shutil
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    path = rt.settings.data_path / "prometheus" / f"worker-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if "prometheus_client" in sys.modules:
        # Flower's celery plugin imported it already; it picks its value store at import, and our
        # metrics (service_gateway.metrics, not imported yet) must be made with the multiprocess one.
        from prometheus_client import values
        values.ValueClass = values.get_value_class()


def _serve_metrics(port: int) -> None:
    from prometheus_client import start_http_server

    from service_gateway.metrics import registry
    start_http_server(port, registry=registry())
    log.info("worker metrics on port %d", port)


def restore_embedded_messages(rt: Runtime) -> int:
    """Give back the embedded broker's messages that a killed worker had taken but not run.

    kombu's SQLAlchemy transport marks a message invisible when a worker takes it and puts it
    back only at a graceful shutdown; after a SIGKILL it stays invisible for ever. At start, a
    worker makes visible again the messages of jobs that are unfinished and not running under a
    live lease (a duplicate is harmless: the claim lets one run through), and deletes those of
    finished jobs, which the transport otherwise keeps.
    """
    import json
    import sqlite3

    from service_gateway.store import QUEUED, utcnow
    path = rt.settings.broker.split(":///", 1)[1]
    restored = 0
    try:
        conn = sqlite3.connect(path, timeout=30)
        try:
            rows = conn.execute("SELECT id, payload FROM kombu_message WHERE visible = 0").fetchall()
            now = utcnow()
            for message_id, payload in rows:
                try:
                    task_id = json.loads(payload)["headers"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                job = rt.store.get(task_id)
                if job is None or job.finished_at is not None:
                    conn.execute("DELETE FROM kombu_message WHERE id = ?", (message_id,))
                    continue
                until = job.lease_until
                if until is not None and until.tzinfo is None:
                    until = until.replace(tzinfo=now.tzinfo)
                if job.lease_owner in (None, QUEUED) or until is None or until < now:
                    conn.execute("UPDATE kombu_message SET visible = 1 WHERE id = ?", (message_id,))
                    restored += 1
            conn.commit()
        finally:
            conn.close()
    except sqlite3.Error as exc:   # no broker file yet, or no table: nothing to restore
        log.info("no embedded messages to restore (%s)", exc.__class__.__name__)
    if restored:
        log.warning("restored %d embedded broker message(s) taken by a worker that died", restored)
    return restored
