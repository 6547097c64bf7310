"""The job store: the durable record of every accepted job, and of the workers online.

Every write is one SQL statement run in autocommit, with its guard in the WHERE clause
(compare-and-set). That keeps SQLite free of "database is locked" (no read-then-write
transaction ever has to upgrade its lock) and makes the races between cancel, start and
finish simple: whichever statement lands first wins, the other matches no row.
"""
from __future__ import annotations

import base64
import logging
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Index, Integer, String, Text, and_, bindparam, case,
                        create_engine, delete, event, func, or_, select, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import APIError, Unavailable
from .status import JobStatus

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30
#: A pooled server connection idle longer than this is pinged before use (see make_engine).
STALE_AFTER_S = 10.0
#: Connections kept per process: one per request thread (gunicorn.conf.py's SG_GUNICORN_THREADS) plus
#: the background threads; more are opened under bursts (max_overflow) and closed after.
POOL_SIZE = int(os.environ.get("SG_GUNICORN_THREADS", "8")) + 2
#: Lease owner of a job waiting in its queue for a retry: free for any worker to claim.
QUEUED = "queued"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One accepted job. Parameters are kept so the record explains itself after result expiry."""

    __tablename__ = "jobs"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING.value)
    doc_url: Mapped[str] = mapped_column(Text)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    misc: Mapped[dict] = mapped_column(JSON, default=dict)
    ann_doc_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The client asked for throttled progress deliveries to callback_url too (docs/webhooks.md).
    callback_progress: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Runs started so far (a redelivery or a retry is another attempt).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: "host:pid" of the process running the job, and until when its lease holds (renewed while it runs).
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Why the job is being retried or was requeued, for the status.
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: A pipeline's step: the pipeline job's uuid and the step's name (None for a job submitted as such).
    parent_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    step: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: A pipeline job: its stages with the parameters in force at submit (see service_gateway.pipelines).
    pipeline: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_owner_service_created", "owner", "service", "created_at"),
        Index("ix_jobs_owner_status_created", "owner", "status", "created_at"),
        Index("ix_jobs_owner_unfinished", "owner", "finished_at"),
        Index("ix_jobs_lease_until", "lease_until"),
        Index("ix_jobs_parent", "parent_uuid"),
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "service": self.service, "status": self.status, "owner": self.owner,
            "doc_url": self.doc_url, "params": self.params, "misc": self.misc,
            "ann_doc_id": self.ann_doc_id, "progress": self.progress,
            "cancel_requested": self.cancel_requested, "attempts": self.attempts, "note": self.note,
            "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            **({"pipeline": self.parent_uuid, "step": self.step} if self.parent_uuid else {}),
        }


class PipelineRecord(Base):
    """A pipeline defined through /admin/pipelines (those of the settings file are not stored)."""

    __tablename__ = "pipelines"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """A client's Idempotency-Key and the job it created (kept SG_IDEMPOTENCY_TTL_S)."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_uuid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkerRecord(Base):
    """A worker process that said it was alive at ``last_seen``."""

    __tablename__ = "workers"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[str] = mapped_column(Text)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:          # SQLite hands back naive datetimes: they were stored as UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


#: built once: every status and submit reads a job this way
_INSERT_JOB = Job.__table__.insert()
#: The worker's two writes of every run, built once (building and cache-keying an UPDATE per call
#: was about half of their CPU): claim (see JobStore.claim) and finish, with or without a lease owner.
_CLAIM_JOB = update(Job).where(
    Job.uuid == bindparam("b_uuid"), Job.finished_at.is_(None), Job.cancel_requested.is_(False),
    or_(Job.lease_until.is_(None), Job.lease_until < bindparam("b_now"), Job.lease_owner == QUEUED,
        Job.lease_owner == bindparam("b_dead_owner")),
).values(status=JobStatus.STARTED.value, started_at=bindparam("b_now"), worker=bindparam("b_worker"),
         lease_owner=bindparam("b_lease_owner"), lease_until=bindparam("b_lease_until"),
         attempts=Job.attempts + 1).returning(*Job.__table__.columns)
_FINISH_VALUES = dict(status=bindparam("b_status"), finished_at=bindparam("b_now"),
                      progress=bindparam("b_progress"),
                      error_code=bindparam("b_code"), error_message=bindparam("b_message"),
                      lease_owner=None, lease_until=None)
_FINISH_JOB = (update(Job).where(Job.uuid == bindparam("b_uuid"), Job.finished_at.is_(None))
               .values(**_FINISH_VALUES).returning(*Job.__table__.columns))
_FINISH_OWN_JOB = (update(Job).where(Job.uuid == bindparam("b_uuid"), Job.finished_at.is_(None),
                                     Job.lease_owner == bindparam("b_owner"))
                   .values(**_FINISH_VALUES).returning(*Job.__table__.columns))
_GET_JOB = select(Job.__table__).where(Job.__table__.c.uuid == bindparam("uuid"))


class JobStore:
    """Access to the job store; safe to share in a process and across fork (engine per pid)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._pid = 0

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = make_engine(self.url)
            self._pid = os.getpid()
        return self._engine

    def _run(self, statement, params: dict[str, Any] | None = None, *, what: str = "job store"):
        try:
            with self.engine.connect() as conn:
                result = conn.execute(statement, params)
                if result.returns_rows:
                    return result.all()
                return result.rowcount
        except OperationalError as exc:
            log.warning("job store unreachable: %s", exc.__class__.__name__)
            raise Unavailable(what) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe to call from many processes)."""
        from .migrations import upgrade
        try:
            upgrade(self.engine)
        except OperationalError as exc:
            raise Unavailable("job store") from exc

    def ping(self) -> None:
        self._run(select(1))

    # -- jobs ---------------------------------------------------------------------------------
    def add(self, **fields: Any) -> None:
        fields.setdefault("created_at", utcnow())
        # The one statement with the values as parameters: SQLAlchemy compiles it once per set of
        # columns, where .values(**fields) rebuilt and re-keyed the statement on every submit.
        self._run(_INSERT_JOB, fields)

    def add_if_absent(self, **fields: Any) -> bool:
        """Insert a job unless its uuid exists (a pipeline step another process created); True if inserted."""
        fields.setdefault("created_at", utcnow())
        try:
            self._run(Job.__table__.insert().values(**fields))
        except IntegrityError:
            return False
        return True

    def children(self, uuid: str) -> list[Job]:
        """A pipeline's step jobs."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(Job.__table__).where(Job.parent_uuid == uuid)).mappings().all()
        except OperationalError as exc:
            raise Unavailable("job store") from exc
        return [Job(**r) for r in rows]

    def stalled_pipelines(self, older_than: timedelta, limit: int = 100) -> list[str]:
        """Unfinished pipelines created before now - ``older_than`` of which no step is unfinished."""
        child = Job.__table__.alias("child")
        busy = select(child.c.uuid).where(child.c.parent_uuid == Job.uuid, child.c.finished_at.is_(None)).exists()
        query = (select(Job.uuid).where(Job.pipeline.is_not(None), Job.finished_at.is_(None),
                                        Job.created_at < utcnow() - older_than, ~busy).limit(limit))
        return [r[0] for r in self._run(query)]

    # -- pipelines defined through the API -------------------------------------------------------
    def get_pipeline(self, name: str) -> dict[str, Any] | None:
        rows = self._run(select(PipelineRecord.__table__).where(PipelineRecord.name == name))
        return dict(rows[0]._mapping) if rows else None

    def list_pipelines(self) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self._run(select(PipelineRecord.__table__).order_by(PipelineRecord.name))]

    def add_pipeline(self, name: str, definition: dict[str, Any]) -> bool:
        now = utcnow()
        try:
            self._run(PipelineRecord.__table__.insert().values(name=name, definition=definition, created_at=now,
                                                                updated_at=now))
        except IntegrityError:
            return False
        return True

    def replace_pipeline(self, name: str, definition: dict[str, Any]) -> bool:
        return self._run(update(PipelineRecord).where(PipelineRecord.name == name).values(
            definition=definition, updated_at=utcnow())) == 1

    def delete_pipeline(self, name: str) -> bool:
        return self._run(delete(PipelineRecord).where(PipelineRecord.name == name)) == 1

    def remove(self, uuid: str) -> None:
        self._run(delete(Job).where(Job.uuid == uuid))

    def get(self, uuid: str) -> Job | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(_GET_JOB, {"uuid": uuid}).mappings().first()
        except OperationalError as exc:
            raise Unavailable("job store") from exc
        return Job(**row) if row else None

    def mark_started(self, uuid: str, worker: str, *, lease_owner: str | None = None, lease_s: float = 60.0,
                     dead_owner: str | None = None) -> bool:
        """Claim the job for one run: False when it was cancelled, has finished, or another run holds it."""
        return self.claim(uuid, worker, lease_owner=lease_owner, lease_s=lease_s, dead_owner=dead_owner) is not None

    def claim(self, uuid: str, worker: str, *, lease_owner: str | None = None, lease_s: float = 60.0,
              dead_owner: str | None = None) -> Job | None:
        """Claim the job for one run and return its row as claimed; None when it cannot be claimed.

        It cannot when it was cancelled, has finished, or another run holds it. The claim takes a
        lease (``lease_owner`` until now + ``lease_s``) that the run renews; a lease that expired,
        or that belongs to ``dead_owner`` (a process known to be gone), is free. So a redelivered
        message never starts a second run of a job that is running. One statement (RETURNING).
        """
        now = utcnow()
        # dead_owner None matches no row (lease_owner = NULL is never true): one statement serves both.
        return self._one_row(_CLAIM_JOB, {
            "b_uuid": uuid, "b_now": now, "b_dead_owner": dead_owner, "b_worker": worker,
            "b_lease_owner": lease_owner or worker, "b_lease_until": now + timedelta(seconds=lease_s)})

    def _one_row(self, statement, params: dict[str, Any] | None = None) -> Job | None:
        """Run an UPDATE ... RETURNING of one job (PostgreSQL, SQLite >= 3.35); its row or None."""
        if params is None:
            statement = statement.returning(*Job.__table__.columns)
        rows = self._run(statement, params)
        return Job(**rows[0]._mapping) if rows else None

    def renew_lease(self, uuid: str, lease_owner: str, lease_s: float) -> bool:
        """Extend the run's lease; False when the run no longer holds the job (it must stop)."""
        return self._run(update(Job).where(
            Job.uuid == uuid, Job.lease_owner == lease_owner, Job.finished_at.is_(None),
        ).values(lease_until=utcnow() + timedelta(seconds=lease_s))) == 1

    def release(self, uuid: str, *, note: str, lease_owner: str | None = None,
                lease_until: datetime | None = None, queued_until: datetime | None = None) -> bool:
        """Give the job back for another attempt (status RETRY); compare-and-set on the old lease.

        With ``queued_until`` the job keeps a *queue lease* (owner ``queued``): any worker may claim
        it, and if no worker has by then (its message was lost), the sweeper publishes it again.
        """
        conditions = [Job.uuid == uuid, Job.finished_at.is_(None)]
        if lease_owner is not None:
            conditions.append(Job.lease_owner == lease_owner)
        if lease_until is not None:
            conditions.append(Job.lease_until == lease_until)
        return self._run(update(Job).where(*conditions).values(
            status=JobStatus.RETRY.value, lease_owner=QUEUED if queued_until else None, lease_until=queued_until,
            note=note)) == 1

    def expired_leases(self, limit: int = 100) -> list[Job]:
        """Unfinished jobs whose run stopped renewing its lease (its worker died or lost the job)."""
        query = (select(Job.__table__).where(Job.finished_at.is_(None), Job.lease_until < utcnow())
                 .order_by(Job.lease_until).limit(limit))
        try:
            with self.engine.connect() as conn:
                return [Job(**r) for r in conn.execute(query).mappings()]
        except OperationalError as exc:
            raise Unavailable("job store") from exc

    def set_status(self, uuid: str, status: JobStatus, progress: int | None = None) -> None:
        """Record a running status (e.g. STORING) on an unfinished job."""
        values: dict[str, Any] = {"status": status.value}
        if progress is not None:
            values["progress"] = progress
        self._run(update(Job).where(Job.uuid == uuid, Job.finished_at.is_(None)).values(**values))

    def finish(self, uuid: str, status: JobStatus, *, progress: int,
               error: tuple[int, str] | None = None, lease_owner: str | None = None) -> Job | None:
        """Record the final status once and return the finished row (truthy); None when the job had
        already finished (or the run lost its lease)."""
        code, message = error if error else (None, None)
        return self._one_row(_FINISH_JOB if lease_owner is None else _FINISH_OWN_JOB, {
            "b_uuid": uuid, "b_owner": lease_owner, "b_status": status.value, "b_now": utcnow(),
            "b_progress": progress, "b_code": code, "b_message": message})

    def requeue_failed(self, uuid: str, note: str) -> bool:
        """Make a FAILURE job PENDING again, attempts reset (an admin's requeue); False if it is not FAILURE."""
        return self._run(update(Job).where(Job.uuid == uuid, Job.status == JobStatus.FAILURE.value).values(
            status=JobStatus.PENDING.value, finished_at=None, started_at=None, progress=0, error_code=None,
            error_message=None, attempts=0, lease_owner=None, lease_until=None, cancel_requested=False,
            note=note)) == 1

    def request_cancel(self, uuid: str) -> None:
        """Flag the job for cancellation; a job no worker has started is REVOKED at once."""
        queued = and_(Job.status.in_([JobStatus.PENDING.value, JobStatus.RETRY.value]),
                      or_(Job.lease_owner.is_(None), Job.lease_owner == QUEUED))
        self._run(update(Job).where(Job.uuid == uuid, Job.finished_at.is_(None)).values(
            cancel_requested=True,
            status=case((queued, JobStatus.REVOKED.value), else_=Job.status),
            finished_at=case((queued, utcnow()), else_=None),
            error_code=case((queued, 109), else_=None),
            error_message=case((queued, "cancelled before it started"), else_=None),
            lease_owner=case((queued, None), else_=Job.lease_owner),
            lease_until=case((queued, None), else_=Job.lease_until),
        ))

    def count_waiting(self) -> dict[str, int]:
        """Jobs waiting to start (PENDING, or RETRY without a live run), by queue."""
        waiting = and_(Job.finished_at.is_(None), Job.status.in_([JobStatus.PENDING.value, JobStatus.RETRY.value]),
                       or_(Job.lease_owner.is_(None), Job.lease_owner == QUEUED))
        return {queue: count for queue, count in self._run(
            select(Job.queue, func.count()).where(waiting).group_by(Job.queue))}

    def revoke_waiting(self, queue: str, message: str) -> list[Job]:
        """End every job waiting in ``queue`` as REVOKED (code 109); return them as revoked."""
        waiting = and_(Job.queue == queue, Job.finished_at.is_(None),
                       Job.status.in_([JobStatus.PENDING.value, JobStatus.RETRY.value]),
                       or_(Job.lease_owner.is_(None), Job.lease_owner == QUEUED))
        rows = self._run(update(Job).where(waiting).values(
            status=JobStatus.REVOKED.value, finished_at=utcnow(), cancel_requested=True, error_code=109,
            error_message=message, lease_owner=None, lease_until=None).returning(*Job.__table__.columns))
        return [Job(**r._mapping) for r in rows]

    def in_progress(self) -> list[Job]:
        """Jobs a worker runs now (started, not finished), oldest first."""
        query = (select(Job.__table__).where(Job.finished_at.is_(None), Job.started_at.is_not(None),
                                             Job.lease_owner.is_not(None), Job.lease_owner != QUEUED)
                 .order_by(Job.started_at))
        try:
            with self.engine.connect() as conn:
                return [Job(**r) for r in conn.execute(query).mappings()]
        except OperationalError as exc:
            raise Unavailable("job store") from exc

    def cancel_requested(self, uuid: str) -> bool:
        rows = self._run(select(Job.cancel_requested).where(Job.uuid == uuid))
        return bool(rows and rows[0][0])

    def list(self, *, owner: str | None, service: str | None = None, status: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             cursor: str | None = None, limit: int = 50, oldest_first: bool = False) -> tuple[list[Job], str | None]:
        """Return one page of jobs, newest first (or oldest first), and the cursor of the next page (or None)."""
        conditions = []
        if owner is not None:
            conditions.append(Job.owner == owner)
        if service:
            conditions.append(Job.service == service)
        if status:
            conditions.append(Job.status == status)
        if since:
            conditions.append(Job.created_at >= since)
        if until:
            conditions.append(Job.created_at < until)
        if cursor:
            created, uuid = decode_cursor(cursor)
            if oldest_first:
                conditions.append(or_(Job.created_at > created, and_(Job.created_at == created, Job.uuid > uuid)))
            else:
                conditions.append(or_(Job.created_at < created, and_(Job.created_at == created, Job.uuid < uuid)))
        order = (Job.created_at.asc(), Job.uuid.asc()) if oldest_first else (Job.created_at.desc(), Job.uuid.desc())
        query = select(Job.__table__).where(*conditions).order_by(*order).limit(limit + 1)
        try:
            with self.engine.connect() as conn:
                rows = [Job(**r) for r in conn.execute(query).mappings()]
        except OperationalError as exc:
            raise Unavailable("job store") from exc
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    # -- workers ------------------------------------------------------------------------------
    def heartbeat(self, hostname: str, queues: list[str], concurrency: int, started_at: datetime) -> None:
        now = utcnow()
        table = WorkerRecord.__table__
        values = {"hostname": hostname, "queues": ",".join(queues), "concurrency": concurrency,
                  "started_at": started_at, "last_seen": now}
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(table).values(**values)
        stmt = stmt.on_conflict_do_update(index_elements=["hostname"],
                                          set_={k: stmt.excluded[k] for k in values if k != "hostname"})
        self._run(stmt)

    def worker_gone(self, hostname: str) -> None:
        self._run(delete(WorkerRecord).where(WorkerRecord.hostname == hostname))

    def workers_online(self, within_s: float) -> list[WorkerRecord]:
        since = utcnow() - timedelta(seconds=within_s)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(WorkerRecord.__table__)
                                    .where(WorkerRecord.last_seen >= since)).mappings().all()
        except OperationalError as exc:
            raise Unavailable("job store") from exc
        return [WorkerRecord(**r) for r in rows]


def encode_cursor(job: Job) -> str:
    raw = f"{_iso(job.created_at)}|{job.uuid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, uuid = raw.split("|", 1)
        return datetime.fromisoformat(created), uuid
    except (ValueError, UnicodeDecodeError):
        raise APIError(204, "cursor: not a cursor returned by GET /jobs") from None


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and autocommit (see module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                               isolation_level="AUTOCOMMIT")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
        return engine
    # Not pool_pre_ping: it costs a round trip before every statement (15-35 % of a request's wall
    # time under load, docs/benchmarks.md). A connection is pinged only when it sat idle in the pool
    # long enough to have been dropped (server restart, idle timeouts); a dead one is replaced
    # before the statement runs, so no statement is ever sent on it and none needs a retry.
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=10, pool_recycle=1800,
                           isolation_level="AUTOCOMMIT")

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_stale(dbapi_conn, record, _proxy):
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < STALE_AFTER_S:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:          # the pool discards it and checks out another (up to 3 times)
            raise DisconnectionError(str(exc.__class__.__name__)) from exc
    return engine
