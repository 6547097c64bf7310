"""Quotas, checked and the job recorded in one serialised transaction, so parallel submits never overshoot.

A client's ``quotas`` hold limits for all its jobs and, under ``services``, per service::

    {"max_in_flight": 4, "max_jobs_per_day": 500, "max_media_minutes_per_month": 6000,
     "services": {"transcode": {"max_in_flight": 1}}}

The check and the insert of the job row run under a per-client lock (an advisory transaction
lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two submits cannot both see the last
free slot.
"""
from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError

from .clients import QUOTAS, Clients
from .errors import APIError, Unavailable
from .metrics import QUOTA_REFUSALS
from .store import IdempotencyKey, Job, JobStore, utcnow

#: Retry-After for an in-flight quota: jobs finish at their own pace, so look again soon.
IN_FLIGHT_RETRY_AFTER_S = 30


class QuotaExceeded(APIError):
    """Raised when a job would go over one of its client's quotas (429, nothing enqueued)."""

    def __init__(self, quota: str, scope: str, used: float, limit: float, retry_after_s: int | None) -> None:
        unit = "minutes" if quota.endswith("minutes_per_month") else "jobs"
        super().__init__(
            401, f"quota {quota}{scope} reached: {_num(used)} {unit} used ({QUOTAS[quota]}), limit {_num(limit)}; "
                 "the job was not accepted" + (f", retry in {retry_after_s} s" if retry_after_s else ""),
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
    _check(conn, store, quotas, job)
    conn.execute(Job.__table__.insert().values(**job))
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
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    minutes = Clients(store).media_seconds_since(conn, owner, month, service) / 60
    return round(minutes, 1), int((next_month - now).total_seconds()) + 1


def _check(conn, store: JobStore, quotas: dict[str, Any], job: dict[str, Any]) -> None:
    for quota, scope, service, limit in _limits(quotas, job["service"]):
        used, retry_after_s = _used(conn, store, quota, job["owner"], service, job["created_at"])
        if used >= limit:
            QUOTA_REFUSALS.labels(quota).inc()
            raise QuotaExceeded(quota, scope, used, limit, retry_after_s)


def quota_usage(store: JobStore, owner: str, quotas: dict[str, Any]) -> dict[str, Any]:
    """Current use against every limit of the owner, for GET /usage."""
    now = datetime.now(timezone.utc)
    try:
        with store.engine.connect() as conn:
            return {f"{quota}{scope}": {"used": _used(conn, store, quota, owner, service, now)[0], "limit": limit}
                    for quota, scope, service, limit in _limits(quotas, None)}
    except OperationalError as exc:
        raise Unavailable("job store") from exc
