"""Quotas, checked and the job recorded in one serialised transaction, so parallel submits never overshoot.

A client's ``quotas`` hold limits for all its jobs and, under ``services``, per service::

    {"max_in_flight": 4, "max_jobs_per_day": 500, "max_media_minutes_per_month": 6000,
     "services": {"transcode": {"max_in_flight": 1}}}

The check and the insert of the job row run under a per-client lock (an advisory transaction
lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two submits cannot both see the last
free slot.

Media minutes count what the ledger recorded this month plus what jobs in flight *reserve*: a
job under a media quota reserves, with its row and under the same lock, the duration its client
declared (``misc.duration``, seconds; times the steps of a pipeline), or when none is declared
all the minutes left (so an undeclared job runs alone against the quota). Its usage record
settles the reservation to the real, probed media seconds (:meth:`Clients.record_usage`).
"""
from __future__ import annotations

import math
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError

from .clients import QUOTAS, Clients, MediaReservation
from .errors import APIError, Unavailable
from .metrics import QUOTA_REFUSALS
from .store import IdempotencyKey, Job, JobStore, utcnow

#: Retry-After for an in-flight quota: jobs finish at their own pace, so look again soon.
IN_FLIGHT_RETRY_AFTER_S = 30
MEDIA_QUOTA = "max_media_minutes_per_month"
#: The misc field in which a client declares its document's duration (seconds) for the media quota.
DURATION_FIELD = "duration"
MAX_DECLARED_S = 366 * 86400


class QuotaExceeded(APIError):
    """Raised when a job would go over one of its client's quotas (429, nothing enqueued)."""

    def __init__(self, quota: str, scope: str, used: float, limit: float, retry_after_s: int | None,
                 detail: str = "") -> None:
        unit = "minutes" if quota.endswith("minutes_per_month") else "jobs"
        super().__init__(
            401, f"quota {quota}{scope} reached: {_num(used)} {unit} used ({QUOTAS[quota]}){detail}, "
                 f"limit {_num(limit)}; the job was not accepted"
                 + (f", retry in {retry_after_s} s" if retry_after_s else ""),
            headers={"Retry-After": str(retry_after_s)} if retry_after_s else None)
        self.quota, self.used, self.limit = quota, used, limit


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_job_within_quotas(store: JobStore, quotas: dict[str, Any], job: dict[str, Any],
                          idempotency: tuple[str, str, float] | None = None) -> str:
    """Insert the job row if the owner's quotas allow it, and return the uuid of the job recorded.

    With ``idempotency`` = (key, request hash, ttl s): a key the owner used within the ttl returns
    that job's uuid and records nothing (409 if the request differs); else the key is recorded
    with the job, in the same transaction.

    Raises:
        QuotaExceeded: the job would go over a quota; nothing was recorded.
    """
    if not _limits(quotas, job["service"]) and idempotency is None:
        store.add(**job)
        return job["uuid"]
    job.setdefault("created_at", utcnow())
    engine = store.engine
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="READ COMMITTED")
                with conn.begin():
                    conn.execute(select(func.pg_advisory_xact_lock(_lock_key(job["owner"]))))
                    return _check_and_insert(conn, store, quotas, job, idempotency)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                recorded = _check_and_insert(conn, store, quotas, job, idempotency)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return recorded
    except OperationalError as exc:
        raise Unavailable("job store") from exc


def _check_and_insert(conn, store: JobStore, quotas: dict[str, Any], job: dict[str, Any],
                      idempotency: tuple[str, str, float] | None) -> str:
    if idempotency is not None:
        key, digest, ttl_s = idempotency
        keys = IdempotencyKey.__table__
        conn.execute(delete(keys).where(keys.c.owner == job["owner"],
                                        keys.c.created_at < job["created_at"] - timedelta(seconds=ttl_s)))
        seen = conn.execute(select(keys.c.job_uuid, keys.c.request_hash).where(
            keys.c.owner == job["owner"], keys.c.key == key)).first()
        if seen is not None:
            if seen.request_hash != digest:
                raise APIError(214, "this Idempotency-Key was used for a different request; use a new key "
                                    "for a new job")
            return seen.job_uuid
    reserve_s = _check(conn, store, quotas, job)
    conn.execute(Job.__table__.insert(), job)      # compiled once per set of columns, as JobStore.add
    if reserve_s is not None:
        conn.execute(MediaReservation.__table__.insert().values(
            job_uuid=job["uuid"], owner=job["owner"], service=job["service"], seconds=reserve_s,
            created_at=job["created_at"]))
    if idempotency is not None:
        conn.execute(IdempotencyKey.__table__.insert().values(
            owner=job["owner"], key=idempotency[0], request_hash=idempotency[1], job_uuid=job["uuid"],
            created_at=job["created_at"]))
    return job["uuid"]


def _lock_key(owner: str) -> int:
    return zlib.crc32(f"sg-quota:{owner}".encode())


def _limits(quotas: dict[str, Any], service: str | None) -> list[tuple[str, str, str | None, float]]:
    """(quota, scope text, service filter, limit) of the limits that apply to a job of ``service``.

    ``service=None`` lists every limit, each service's included (for GET /usage).
    """
    out = [(name, "", None, quotas[name]) for name in QUOTAS if quotas.get(name) is not None]
    per_service = quotas.get("services") or {}
    for svc in sorted(per_service) if service is None else [service]:
        limits = per_service.get(svc) or {}
        out += [(name, f" for {svc}", svc, limits[name]) for name in QUOTAS if limits.get(name) is not None]
    return out


def declared_seconds(job: dict[str, Any]) -> float | None:
    """The media duration the client declared in ``misc.duration`` (seconds), None if it did not.

    Raises:
        APIError: 204 when it is not a number of seconds > 0.
    """
    value = (job.get("misc") or {}).get(DURATION_FIELD)
    if value is None or value == "":
        return None
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_DECLARED_S:      # also NaN and inf
        raise APIError(204, f"misc.{DURATION_FIELD}: the document's duration in seconds, a number > 0 "
                            f"(e.g. 754.2), for the media-minutes quota")
    return seconds


def _steps(job: dict[str, Any]) -> int:
    """Jobs the submit makes: a pipeline's steps each process (and bill) the media."""
    pipeline = job.get("pipeline")
    return max(1, sum(len(stage) for stage in pipeline["stages"])) if pipeline else 1


def _month(now: datetime) -> tuple[datetime, datetime]:
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return month, (month + timedelta(days=32)).replace(day=1)


def _used(conn, store: JobStore, quota: str, owner: str, service: str | None, now: datetime) -> tuple[float, int]:
    """The owner's current use for ``quota`` and the Retry-After (s) that would help."""
    # A pipeline counts once: its steps are not jobs the client submitted
    conditions = [Job.owner == owner, Job.parent_uuid.is_(None)] + ([Job.service == service] if service else [])
    if quota == "max_in_flight":
        used = conn.execute(select(func.count()).select_from(Job).where(*conditions, Job.finished_at.is_(None)))
        return used.scalar(), IN_FLIGHT_RETRY_AFTER_S
    if quota == "max_jobs_per_day":
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        used = conn.execute(select(func.count()).select_from(Job).where(*conditions, Job.created_at >= day))
        return used.scalar(), int((day + timedelta(days=1) - now).total_seconds()) + 1
    month, next_month = _month(now)
    processed, reserved = Clients(store).media_use(conn, owner, month, service, now)
    return round((processed + reserved) / 60, 1), int((next_month - now).total_seconds()) + 1


def _check(conn, store: JobStore, quotas: dict[str, Any], job: dict[str, Any]) -> float | None:
    """Raise QuotaExceeded if the job would go over a quota; else return the media seconds it must
    reserve (None when no media quota applies)."""
    limits = _limits(quotas, job["service"])
    reserve_s: float | None = None
    if any(quota == MEDIA_QUOTA for quota, *_ in limits):
        declared = declared_seconds(job)
        need_s = declared * _steps(job) if declared is not None else None
        Clients(store).drop_dead_reservations(conn, job["owner"], job["created_at"])
    for quota, scope, service, limit in limits:
        if quota == MEDIA_QUOTA:
            left_s = _check_media(conn, store, scope, service, limit, job, need_s)
            reserve_s = min(left_s if reserve_s is None else reserve_s, left_s) if need_s is None else need_s
            continue
        used, retry_after_s = _used(conn, store, quota, job["owner"], service, job["created_at"])
        if used >= limit:
            QUOTA_REFUSALS.labels(quota).inc()
            raise QuotaExceeded(quota, scope, used, limit, retry_after_s)
    return reserve_s


def _check_media(conn, store: JobStore, scope: str, service: str | None, limit: float, job: dict[str, Any],
                 need_s: float | None) -> float:
    """Check one media-minutes limit; return the seconds it has left (what an undeclared job reserves)."""
    now = job["created_at"]
    month, next_month = _month(now)
    processed, reserved = Clients(store).media_use(conn, job["owner"], month, service, now)
    limit_s, used_s = limit * 60, processed + reserved
    over = used_s + need_s > limit_s if need_s is not None else used_s >= limit_s
    if not over:
        return limit_s - used_s
    # Only the month's end helps once what was processed leaves no room; else jobs in flight may settle lower.
    month_end = processed + (need_s or 0) > limit_s or (need_s is None and processed >= limit_s)
    retry_after_s = int((next_month - now).total_seconds()) + 1 if month_end else IN_FLIGHT_RETRY_AFTER_S
    detail = f", {_num(round(reserved / 60, 1))} of them held by jobs in flight" if reserved else ""
    if need_s is not None:
        detail += f"; this job declares {_num(round(need_s / 60, 1))}"
    QUOTA_REFUSALS.labels(MEDIA_QUOTA).inc()
    raise QuotaExceeded(MEDIA_QUOTA, scope, round(used_s / 60, 1), limit, retry_after_s, detail)


def quota_usage(store: JobStore, owner: str, quotas: dict[str, Any]) -> dict[str, Any]:
    """Current use against every limit of the owner, for GET /usage."""
    now = datetime.now(timezone.utc)
    try:
        with store.engine.connect() as conn:
            return {f"{quota}{scope}": {"used": _used(conn, store, quota, owner, service, now)[0], "limit": limit}
                    for quota, scope, service, limit in _limits(quotas, None)}
    except OperationalError as exc:
        raise Unavailable("job store") from exc
