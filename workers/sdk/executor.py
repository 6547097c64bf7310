"""One job's life in a worker: guard, fetch, run, store results, report, clean up."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from service_gateway.clients import Clients
from service_gateway.errors import JobCancelled, JobError
from service_gateway.logs import current_job_id, current_request_id
from service_gateway.services import ParameterError
from service_gateway.settings import Settings
from service_gateway.status import RETRYING, JobStatus
from service_gateway.storage import LocalStorage
from service_gateway.store import QUEUED, JobStore, utcnow

from .context import Cancellation, JobContext, ProgressReporter
from .fetch import fetch
from .storage import post_annotations
from .service import Service

if TYPE_CHECKING:
    from service_gateway.webhooks import ProgressCallbacks

log = logging.getLogger("workers.executor")



class StateSink(Protocol):
    """Where a job's states go: the Celery result backend, or the console for local runs."""

    def running(self, job_id: str, state: JobStatus, meta: dict[str, Any]) -> None: ...
    def success(self, job_id: str, result: dict[str, Any]) -> None: ...
    def failed(self, job_id: str, state: JobStatus, error: JobError) -> None: ...
    def progress_of(self, job_id: str) -> int: ...


#: Where the running task's Celery events go (set per task by the worker app; None = no events).
current_events: ContextVar[Callable[[str, dict[str, Any]], None] | None] = ContextVar("current_events", default=None)


class CeleryBackendSink:
    """Write states to the Celery result backend, as the gateway's status route reads them."""

    def __init__(self, backend, retry_for_s: float = 300.0) -> None:
        self.backend = backend
        self.retry_for_s = retry_for_s

    def progress_of(self, job_id: str) -> int:
        """The progress a previous attempt reached (a new attempt never reports less)."""
        try:
            meta = self.backend.get_task_meta(job_id)
        except Exception:
            return 0
        result = meta.get("result")
        return int(result.get("current", 0)) if isinstance(result, dict) and meta.get("status") != "SUCCESS" else 0

    def running(self, job_id: str, state: JobStatus, meta: dict[str, Any]) -> None:
        try:
            self.backend.store_result(job_id, meta, backend_state(state))
        except Exception as exc:  # progress is best effort: the job goes on
            log.warning("progress write failed: %s", exc.__class__.__name__, extra={"job_id": job_id})
        send = current_events.get()
        if send is not None and state is not JobStatus.STARTED:   # Celery sends task-started itself
            try:
                # Flower shows a custom event type as the task's state (PROGRESS, STORING, RETRYING) and
                # its "result" field in the task view: the same running object as the status route.
                send(f"task-{backend_state(state).lower()}", {"result": json.dumps(meta)})
            except Exception as exc:
                log.debug("task event not sent: %s", exc.__class__.__name__)

    def success(self, job_id: str, result: dict[str, Any]) -> None:
        retry_write(lambda: self.backend.store_result(job_id, result, JobStatus.SUCCESS.value), job_id,
                    self.retry_for_s)

    def failed(self, job_id: str, state: JobStatus, error: JobError) -> None:
        plain = JobError(error.code, error.message)  # stored as the core JobError, whatever the subclass
        retry_write(lambda: self.backend.store_result(job_id, plain, state.value), job_id, self.retry_for_s)


def backend_state(state: JobStatus) -> str:
    """The state name written to the result backend: Celery decodes its own RETRY as an exception, so a
    retrying job's running object is stored as RETRYING (the status route names it RETRY)."""
    return RETRYING if state is JobStatus.RETRY else state.value


def retry_write(write: Callable[[], Any], job_id: str, for_s: float) -> Any:
    """Run a final-state write, retrying with capped exponential backoff while its store is unreachable.

    A job's outcome must not be lost to a result backend or job store that is down for a while
    (a restart, a failover): the worker keeps trying for ``for_s`` seconds (SG_STATE_WRITE_RETRY_S).
    """
    deadline = time.monotonic() + for_s
    delay = 0.2
    while True:
        try:
            return write()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                log.error("state write failed for good: %s", exc.__class__.__name__, extra={"job_id": job_id})
                raise
            log.warning("state write failed (%s), retrying in %.1f s", exc.__class__.__name__, delay,
                        extra={"job_id": job_id})
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def backoff_s(settings: Settings, attempt: int) -> float:
    """Wait before attempt ``attempt + 1``: exponential from SG_RETRY_BACKOFF_S, capped, with full jitter."""
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


class LeaseLost(JobError):
    """Raised inside a job whose lease was taken over (it was presumed dead): it must stop and write nothing."""

    def __init__(self) -> None:
        super().__init__(110, "the job's lease was lost; another attempt owns it")


class CancelWatcher(threading.Thread):
    """Watch a running job from the job store: cancel requests, its time limit, and its lease.

    Polling the store (rather than a broadcast) works on every broker, the embedded one included,
    and a cancel recorded while no worker ran is seen as soon as the job starts. The lease is
    renewed every third of SG_JOB_LEASE_S; if it cannot be (another process took the job over
    after presuming this one dead), the job stops without writing anything. Local runs have no
    store: then only the time limit is watched.
    """

    def __init__(self, store: JobStore | None, job_id: str, cancellation: Cancellation, interval_s: float,
                 time_limit_s: float = 0.0, lease_owner: str | None = None, lease_s: float = 30.0) -> None:
        super().__init__(name=f"cancel-watch-{job_id[:8]}", daemon=True)
        self.store, self.job_id, self.cancellation, self.interval_s = store, job_id, cancellation, interval_s
        self.time_limit_s = time_limit_s
        self.lease_owner, self.lease_s = lease_owner, lease_s
        self._halt = threading.Event()   # not _stop: Thread has a _stop method

    def run(self) -> None:
        deadline = time.monotonic() + self.time_limit_s if self.time_limit_s else None
        renew_at = time.monotonic() + self.lease_s / 3
        while not self._halt.wait(self.interval_s):
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("time limit of %.0f s reached, stopping", self.time_limit_s, extra={"job_id": self.job_id})
                self.cancellation.request(JobError(108, f"the job ran longer than its time limit of "
                                                        f"{self.time_limit_s:g} s"))
                return
            if self.store is None:
                continue
            try:
                if self.lease_owner and time.monotonic() >= renew_at:
                    if not self.store.renew_lease(self.job_id, self.lease_owner, self.lease_s):
                        log.error("lease lost: another attempt owns the job; stopping", extra={"job_id": self.job_id})
                        self.cancellation.request(LeaseLost())
                        return
                    renew_at = time.monotonic() + self.lease_s / 3
                if self.store.cancel_requested(self.job_id):
                    log.info("cancel request seen, stopping", extra={"job_id": self.job_id})
                    self.cancellation.request()
                    return
            except Exception as exc:   # the store is down: keep running, try again next tick
                log.warning("job store check failed: %s", exc.__class__.__name__, extra={"job_id": self.job_id})

    def stop(self) -> None:
        self._halt.set()


class UsageMeter:
    """Wall and CPU time (this process and its reaped children, e.g. ffmpeg) of one job, and its media."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.cpu0 = _cpu_s()
        self.ended: float | None = None
        self.cpu1: float | None = None
        self.media_seconds = 0.0
        self.output_bytes = 0

    def stop(self, job: JobContext) -> None:
        self.ended, self.cpu1 = time.monotonic(), _cpu_s()
        if job.media_info is not None:
            from .media import duration_s
            self.media_seconds = duration_s(job.media_info)
        self.output_bytes = sum(o.size for o in job.outputs)

    def wall_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def cpu_s(self) -> float:
        return (self.cpu1 if self.cpu1 is not None else _cpu_s()) - self.cpu0


def _cpu_s() -> float:
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Executor:
    """Runs jobs of any service; one per worker process.

    Args:
        settings: resolved settings.
        sink: where states go (the result backend, or the console for local runs).
        store: the job store (None for local runs: no claim, lease, retries or usage).
        requeue: publishes a job's task again after ``countdown`` seconds (retries); None = no retries.
    """

    def __init__(self, settings: Settings, sink: StateSink, store: JobStore | None, host: str | None = None,
                 requeue: Callable[[Any, float], None] | None = None,
                 on_finished: Callable[[str], None] | None = None,
                 on_step_finished: Callable[[str], None] | None = None):
        self.settings = settings
        self.sink = sink
        self.store = store
        self.host = host or socket.gethostname()
        self.lease_owner = f"{self.host}:{os.getpid()}"
        self.requeue = requeue
        self.on_finished = on_finished
        self.on_step_finished = on_step_finished
        self.storage = LocalStorage(settings.output_dir)
        #: rows as this process's final write left them (finish ... RETURNING), for the usage record
        self._finished: dict[str, Any] = {}
        #: progress deliveries of the jobs that asked for them (made when the first one does)
        self._progress_callbacks: ProgressCallbacks | None = None

    def execute(self, service: Service, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Run one job from its task payload; return the result, or None when it did not succeed."""
        job_id = payload["job_id"]
        token = current_job_id.set(job_id)
        request_token = current_request_id.set(payload.get("request_id"))
        try:
            attempt, callbacks = 1, None
            if self.store is not None:
                row = self._claim(job_id)
                if row is None:
                    return None
                attempt = row.attempts
                callbacks = self._callbacks_for(row)
            meter = UsageMeter()
            result = self._run(service, payload, meter, attempt, callbacks)
            if self.store is not None:
                self._record_usage(job_id, meter)
            return result
        finally:
            self._finished.pop(job_id, None)
            self._advance_pipeline(payload)
            current_request_id.reset(request_token)
            current_job_id.reset(token)

    def _advance_pipeline(self, payload: dict[str, Any]) -> None:
        """A pipeline's step that has ended moves its pipeline on (next stage, failure or result)."""
        parent = payload.get("pipeline")
        if not parent or self.store is None or self.on_step_finished is None:
            return
        try:
            row = self.store.get(payload["job_id"])
            if row is not None and row.finished_at is not None and row.parent_uuid == parent:
                self.on_step_finished(parent)
        except Exception as exc:   # the sweeper advances pipelines that wait on nothing
            log.error("pipeline not advanced now (%s); the sweeper will", exc.__class__.__name__)

    def _record_usage(self, job_id: str, meter: "UsageMeter") -> None:
        """Write the job's usage record (billing) and metrics once it has finished; failures are only logged."""
        assert self.store is not None
        try:
            row = self._finished.pop(job_id, None) or self.store.get(job_id)
            if row is None or row.finished_at is None:
                return
            if row.callback_url and self.on_finished is not None:
                on_finished = self.on_finished
                if self._progress_callbacks is not None:   # after a progress POST in flight, never before
                    self._progress_callbacks.then(job_id, lambda: on_finished(job_id))
                else:
                    on_finished(job_id)
            from service_gateway.metrics import observe_job
            wait = (row.started_at - row.created_at).total_seconds() if row.started_at and row.created_at else None
            observe_job(row.service, row.status, meter.wall_s(), wait)
            Clients(self.store).record_usage(
                job_uuid=job_id, owner=row.owner, service=row.service, status=row.status,
                media_seconds=round(meter.media_seconds, 3), wall_seconds=round(meter.wall_s(), 3),
                cpu_seconds=round(meter.cpu_s(), 3), output_bytes=meter.output_bytes,
                created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)
        except Exception as exc:
            log.error("usage record not written: %s", exc.__class__.__name__)

    def _claim(self, job_id: str):
        """Take the job's lease for this run and return its row; None when there is nothing to run.

        Nothing to run: unknown, finished, cancelled (then it is made REVOKED), or running in
        another live process (a duplicate delivery, dropped: that run, or the sweeper if it
        dies, sees the job through).
        """
        assert self.store is not None
        store = self.store
        # The common case in one statement: a queued job, claimed and read back (UPDATE ... RETURNING).
        claimed = retry_write(lambda: store.claim(job_id, self.host, lease_owner=self.lease_owner,
                                                  lease_s=self.settings.job_lease_s),
                              job_id, self.settings.state_write_retry_s)
        if claimed is not None:
            return claimed
        row = store.get(job_id)
        if row is None:
            log.warning("no such job in the store; message dropped")
            return None
        dead = self._dead_owner(row.lease_owner) if row.finished_at is None and not row.cancel_requested else None
        if dead:   # the lease of a killed process of this host is free at once
            claimed = store.claim(job_id, self.host, lease_owner=self.lease_owner,
                                  lease_s=self.settings.job_lease_s, dead_owner=dead)
            if claimed is not None:
                log.warning("took over the job from dead process %s", dead)
                return claimed
            row = store.get(job_id) or row
        if row.finished_at is None and row.cancel_requested and not _live_lease(row):
            self._finish_failed(job_id, JobStatus.REVOKED, JobCancelled("cancelled before it started"), 0)
        elif row.job_status is JobStatus.REVOKED:
            self.sink.failed(job_id, JobStatus.REVOKED, JobError(row.error_code or 109, row.error_message or ""))
        elif row.finished_at is None:
            log.info("job is running under another live lease (%s); duplicate delivery dropped", row.lease_owner)
        else:
            log.info("job already %s; nothing to do", row.status)
        return None

    def _dead_owner(self, owner: str | None) -> str | None:
        """``owner`` if it is a process of this host that no longer exists (a killed pool process)."""
        if not owner or owner == QUEUED:
            return None
        host, _, pid = owner.rpartition(":")
        if host != self.host or not pid.isdigit() or owner == self.lease_owner:
            return None
        return None if pid_alive(int(pid)) else owner

    def _callbacks_for(self, row) -> ProgressCallbacks | None:
        """The progress deliveries of a job whose client asked for them (callback_progress), else None."""
        if not (row.callback_progress and row.callback_url):
            return None
        if self._progress_callbacks is None:
            from service_gateway.webhooks import ProgressCallbacks, webhook_secret
            settings, clients = self.settings, Clients(self.store)

            def secret_of(owner: str) -> str:
                client = clients.get(owner)
                return webhook_secret(settings.secret, owner, client.token_version if client else 0)
            self._progress_callbacks = ProgressCallbacks(settings, secret_of)
        self._progress_callbacks.open(row.uuid, row.callback_url, row.owner)
        return self._progress_callbacks

    def _run(self, service: Service, payload: dict[str, Any], meter: "UsageMeter | None" = None,
             attempt: int = 1, callbacks: "ProgressCallbacks | None" = None) -> dict[str, Any] | None:
        job_id = payload["job_id"]
        start_time = datetime.now(timezone.utc).isoformat()
        cancellation = Cancellation()
        lease_owner = self.lease_owner if self.store is not None else None

        def meta(current: int, **extra: Any) -> dict[str, Any]:
            body = {"current": current, "total": 100, "worker_id_version": f"{service.name}:{service.version}",
                    "start_time": start_time, "host": self.host, "type": service.name}
            if attempt > 1:
                body["attempt"] = attempt
            return {**body, **extra}

        def write(value: int) -> None:
            self.sink.running(job_id, JobStatus.PROGRESS, meta(value))
            if callbacks is not None:
                callbacks.update(job_id, value)     # handed over: the POST is the sender thread's
        reporter = ProgressReporter(write, self.settings.progress_interval_s)
        if attempt > 1:   # progress never goes back: a new attempt reports only past the last one's
            reporter.value = reporter.written = self.sink.progress_of(job_id)
        self.sink.running(job_id, JobStatus.STARTED, meta(reporter.value))
        watcher = CancelWatcher(self.store, job_id, cancellation, self.settings.cancel_poll_interval_s,
                                self.settings.time_limit_for(service.name), lease_owner, self.settings.job_lease_s)
        watcher.start()
        work_root = self.settings.work_dir or None
        # The pid in the name lets a later worker remove the dir if this process is killed (see clean_work_dirs).
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"sg-{job_id[:8]}-{os.getpid()}-", dir=work_root))
        job = JobContext(
            id=job_id, service=service.name, doc_url=payload["doc_url"], params=payload.get("params") or {},
            misc=payload.get("misc") or {}, tmp_dir=tmp_dir, storage=self.storage, reporter=reporter,
            cancellation=cancellation,
            set_state=lambda state: self._set_state(job_id, state, meta(reporter.value)))
        try:
            try:
                job.params = service.validate(job.params)
            except ParameterError as exc:
                raise JobError(307, f"invalid parameter {exc}") from None
            job.input_path = self._input(payload, tmp_dir, job)
            job.check_cancelled()
            log.info("running %s (attempt %d)", service.name, attempt)
            assert service.run is not None, f"service {service.name} has no handler"
            result = service.run(job) or {}
            job.check_cancelled()
            if job.outputs:
                result["outputs"] = [o.to_dict() for o in job.outputs]
            if payload.get("ann_doc_id"):
                job.storing()
                post_annotations(self.settings, payload["ann_doc_id"], result)
                job.check_cancelled()
            self.sink.success(job_id, result)
            if self.store is not None:
                row = retry_write(lambda: self.store.finish(job_id, JobStatus.SUCCESS, progress=100,
                                                            lease_owner=lease_owner),
                                  job_id, self.settings.state_write_retry_s)
                if row is not None:
                    self._finished[job_id] = row
            log.info("job succeeded")
            return result
        except LeaseLost:
            log.warning("stopped without a trace: another attempt owns the job")
        except JobCancelled as exc:
            self._finish_failed(job_id, JobStatus.REVOKED, exc, reporter.value, lease_owner)
        except JobError as exc:
            if exc.transient and self._retry_later(service, job_id, attempt, exc, meta(reporter.value)):
                return None
            log.info("job failed: %s", exc)
            self._finish_failed(job_id, JobStatus.FAILURE, exc, reporter.value, lease_owner)
        except Exception as exc:
            log.exception("job failed with an unexpected error")
            error = JobError(306, f"{service.name} failed: {exc.__class__.__name__}: {exc}"[:500])
            self._finish_failed(job_id, JobStatus.FAILURE, error, reporter.value, lease_owner)
        finally:
            if callbacks is not None:
                callbacks.close(job_id)     # ended (or retried later): no progress delivery after this
            watcher.stop()
            cancellation.request()   # no child of this job outlives it
            shutil.rmtree(tmp_dir, ignore_errors=True)
            if meter is not None:
                meter.stop(job)
        return None

    def _input(self, payload: dict[str, Any], tmp_dir: Path, job: JobContext) -> Path:
        """The document: fetched from doc_url, or, for a pipeline step, an earlier step's output."""
        source = payload.get("input")
        if source:
            path = self.storage.path(source["job"], source["name"])
            if path is None:
                raise JobError(301, f"the output {source['name']!r} of the pipeline's earlier step is gone")
            return path
        return fetch(job.doc_url, tmp_dir, self.settings, job.check_cancelled)

    def _retry_later(self, service: Service, job_id: str, attempt: int, error: JobError,
                     meta: dict[str, Any]) -> bool:
        """Give a transient failure another attempt after a backoff; False when retries are used up."""
        if self.store is None or self.requeue is None or attempt > self.settings.max_retries_for(service.name):
            return False
        wait_s = backoff_s(self.settings, attempt)
        note = f"attempt {attempt} failed ({error}); retrying in {wait_s:.0f} s"
        queued_until = utcnow() + timedelta(seconds=wait_s + self.settings.job_lease_s)
        if not self.store.release(job_id, note=note, lease_owner=self.lease_owner, queued_until=queued_until):
            return False
        log.warning("transient failure, %s", note)
        self.sink.running(job_id, JobStatus.RETRY, {**meta, "note": note})
        row = self.store.get(job_id)
        try:
            self.requeue(row, wait_s)
        except Exception as exc:   # the broker is down: the sweeper republishes once the queue lease expires
            log.error("could not requeue the retry now (%s); the sweeper will", exc.__class__.__name__)
        return True

    def _set_state(self, job_id: str, state: JobStatus, meta: dict[str, Any]) -> None:
        self.sink.running(job_id, state, meta)
        if self.store is not None:
            try:   # a running status is informative, like progress: the job goes on without it
                self.store.set_status(job_id, state)
            except Exception as exc:
                log.warning("status write failed: %s", exc.__class__.__name__, extra={"job_id": job_id})

    def _finish_failed(self, job_id: str, state: JobStatus, error: JobError, progress: int,
                       lease_owner: str | None = None) -> None:
        # The store first: the gateway serves FAILURE/REVOKED from it, so once the backend
        # says so, the store already does.
        if self.store is not None:
            row = retry_write(lambda: self.store.finish(job_id, state, progress=progress,
                                                        error=(error.code, error.message), lease_owner=lease_owner),
                              job_id, self.settings.state_write_retry_s)
            if row is not None:
                self._finished[job_id] = row
        self.sink.failed(job_id, state, error)


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs; a zombie (killed, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):     # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def clean_work_dirs(work_root: str | None) -> int:
    """Remove the private temp dirs left by killed worker processes (their pid is gone); return how many."""
    root = Path(work_root or tempfile.gettempdir())
    removed = 0
    for path in root.glob("sg-*-*-*"):
        parts = path.name.split("-")
        if len(parts) < 4 or not parts[2].isdigit() or not path.is_dir():
            continue
        if pid_alive(int(parts[2])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("removed %d temp dir(s) left by killed jobs", removed)
    return removed


def _live_lease(row) -> bool:
    until = row.lease_until
    if until is None or row.lease_owner in (None, QUEUED):
        return False
    if until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    return until > utcnow()


def recover_expired(store: JobStore, settings: Settings, sink: StateSink, requeue: Callable[[Any, float], None],
                    on_finished: Callable[[str], None] | None = None) -> int:
    """Requeue (or fail, past their retries) the jobs whose lease expired; return how many were handled.

    A lease expires when the process running the job died without a word (SIGKILL, OOM, a lost
    node), or when a job waiting for a retry never got its message back. Each worker runs this
    periodically; the compare-and-set in :meth:`JobStore.release` makes exactly one of them act.
    A job failed here gets its usage record and its webhook (``on_finished``) like any other.
    """
    handled = 0
    for row in store.expired_leases():
        token = current_job_id.set(row.uuid)
        try:
            lost_run = row.lease_owner != QUEUED
            note = (f"its worker ({row.lease_owner}) stopped renewing the lease; requeued" if lost_run
                    else "its retry message did not come back; requeued")
            limit = settings.max_retries_for(row.service)
            if lost_run and row.attempts > limit:
                if store.release(row.uuid, note=note, lease_owner=row.lease_owner, lease_until=row.lease_until):
                    error = JobError(110, f"the worker running this job was lost {row.attempts} times "
                                          f"(retry limit {limit}); it will not be run again")
                    finished = store.finish(row.uuid, JobStatus.FAILURE, progress=row.progress,
                                            error=(error.code, error.message))
                    sink.failed(row.uuid, JobStatus.FAILURE, error)
                    log.error("job failed: %s", error.message)
                    if finished is not None:
                        Clients(store).job_ended(finished, on_finished)
                    handled += 1
                continue
            queued_until = utcnow() + timedelta(seconds=settings.job_lease_s * 2)
            if store.release(row.uuid, note=note, lease_owner=row.lease_owner, lease_until=row.lease_until,
                             queued_until=queued_until):
                log.warning("lease expired: %s", note)
                sink.running(row.uuid, JobStatus.RETRY, {"current": sink.progress_of(row.uuid), "total": 100,
                                                         "type": row.service, "note": note})
                requeue(store.get(row.uuid), 0)
                handled += 1
        except Exception as exc:
            log.error("could not recover the job: %s", exc.__class__.__name__)
        finally:
            current_job_id.reset(token)
    return handled
