"""Client applications: credentials, scopes, quotas, the login throttle and the usage ledger.

A client is what the Dalet Mediator calls an API key: a ``client_id`` and a secret (stored as
an Argon2id hash, shown once), exchanged at ``POST /auth/access-token`` for a short-lived JWT.
Its ``scopes`` say which services and pipelines it may call (``*`` = all, ``admin`` = also the
admin routes and every client's jobs); its ``quotas`` are checked before a job is accepted.
``token_version`` is stamped in every token and bumped by disable and rotate-secret, which
makes the client's existing tokens fail at once.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, and_, delete, func,
                        or_, select, update)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column

from .errors import APIError, Unavailable
from .store import Base, Job, JobStore, utcnow

log = logging.getLogger(__name__)

ADMIN_SCOPE = "admin"
ALL_SERVICES = "*"

#: The quota names, their meaning and unit (docs/security.md lists them).
QUOTAS: dict[str, str] = {
    "max_in_flight": "jobs accepted and not yet finished",
    "max_jobs_per_day": "jobs accepted since 00:00 UTC",
    "max_media_minutes_per_month": "minutes of media processed since the 1st of the month, 00:00 UTC, "
                                   "and held by jobs in flight",
}

#: Failed logins for one client id from one address within THROTTLE_WINDOW_S before that address is
#: locked out of that id, and the lock (doubling with each further failure, up to the max).
THROTTLE_FAILURES = 5
#: ... and failures for one client id from all addresses together before the id is locked for every
#: address: the ceiling against guessing spread over many addresses.
THROTTLE_CLIENT_FAILURES = 50
THROTTLE_WINDOW_S = 300
THROTTLE_LOCK_S = 30
THROTTLE_LOCK_MAX_S = 900
#: A finished job's reservation still counts this long while its usage record is on its way.
RESERVATION_GRACE_S = 300


class Client(Base):
    """A client application allowed to call the gateway."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    secret_hash: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    scopes: Mapped[list] = mapped_column(JSON, default=list)
    quotas: Mapped[dict] = mapped_column(JSON, default=dict)
    token_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "name": self.name, "enabled": self.enabled, "scopes": self.scopes,
                "quotas": self.quotas, "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at)}


class LoginThrottle(Base):
    """Failed logins for slowing down guessing, keyed ``ip:<address> <client id>`` (per presented id,
    known or not, and caller address) and ``id:<client id>`` (the id's ceiling, all addresses)."""

    __tablename__ = "login_throttle"

    client_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageRecord(Base):
    """One finished job, for billing: written by the worker when the job ends."""

    __tablename__ = "usage"

    job_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    media_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    output_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_usage_owner_finished", "owner", "finished_at"),
                      Index("ix_usage_finished", "finished_at"))

    def to_dict(self) -> dict[str, Any]:
        return {"job_uuid": self.job_uuid, "owner": self.owner, "service": self.service, "status": self.status,
                "media_seconds": self.media_seconds, "wall_seconds": self.wall_seconds,
                "cpu_seconds": self.cpu_seconds, "output_bytes": self.output_bytes,
                "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at)}


class MediaReservation(Base):
    """The media seconds a job in flight holds against its client's monthly media quota.

    Written with the job at submit (see service_gateway.quotas), deleted when the job's usage
    record (its real media seconds) is written; it counts only while its job is unfinished.
    """

    __tablename__ = "media_reservations"

    job_uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    service: Mapped[str] = mapped_column(String(100))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_media_reservations_owner", "owner"),)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


# -- secrets ------------------------------------------------------------------------------------
_hasher = None


def hasher():
    """The Argon2id hasher (argon2-cffi's RFC 9106 low-memory profile), made once per process."""
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher
        from argon2.profiles import RFC_9106_LOW_MEMORY
        _hasher = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
    return _hasher


def new_client_id() -> str:
    return "c_" + secrets.token_hex(8)


def new_secret() -> str:
    return "sgs_" + secrets.token_urlsafe(32)


#: A hash of a random secret nobody knows: verified against for unknown ids, so that an unknown
#: id costs the same time as a wrong secret and ids cannot be enumerated by timing.
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hasher().hash(new_secret())
    return _DUMMY_HASH


def verify_secret(secret_hash: str | None, secret: str) -> bool:
    """Check ``secret`` against a hash; with no hash, spend the same time and answer False."""
    from argon2.exceptions import InvalidHashError, VerificationError
    try:
        return hasher().verify(secret_hash or _dummy_hash(), secret) and secret_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# -- the store's client operations ---------------------------------------------------------------
@dataclass
class NewClient:
    client: Client
    secret: str


class Clients:
    """Client, throttle and usage operations on the job store's database."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def _rows(self, query) -> list:
        try:
            with self.store.engine.connect() as conn:
                return list(conn.execute(query).mappings())
        except OperationalError as exc:
            raise Unavailable("job store") from exc

    # clients
    def add(self, name: str, scopes: list[str], quotas: dict[str, Any] | None = None) -> NewClient:
        secret = new_secret()
        now = utcnow()
        values = {"client_id": new_client_id(), "name": name, "secret_hash": hasher().hash(secret), "enabled": True,
                  "scopes": sorted(set(scopes)), "quotas": quotas or {}, "token_version": 1,
                  "created_at": now, "updated_at": now}
        try:
            self.store._run(Client.__table__.insert().values(**values))
        except IntegrityError:
            raise APIError(212, f"a client named {name!r} exists already") from None
        return NewClient(Client(**values), secret)

    def get(self, client_id: str) -> Client | None:
        rows = self._rows(select(Client.__table__).where(Client.client_id == client_id))
        return Client(**rows[0]) if rows else None

    def find(self, client_id_or_name: str) -> Client | None:
        rows = self._rows(select(Client.__table__).where(
            (Client.client_id == client_id_or_name) | (Client.name == client_id_or_name)))
        return Client(**rows[0]) if rows else None

    def all(self) -> list[Client]:
        return [Client(**r) for r in self._rows(select(Client.__table__).order_by(Client.created_at))]

    def update(self, client_id: str, *, revoke_tokens: bool = False, **values: Any) -> Client:
        """Change a client; ``revoke_tokens`` bumps its token version so its tokens fail at once.

        Enabling a client or giving it a new secret also lifts its login lockouts (the operator's
        remedy when someone else's failed guesses locked the client out).
        """
        values["updated_at"] = utcnow()
        if revoke_tokens:
            values["token_version"] = Client.token_version + 1
        if not self.store._run(update(Client).where(Client.client_id == client_id).values(**values)):
            raise APIError(213, f"no client {client_id!r}")
        if values.get("enabled") is True or "secret_hash" in values:
            self.clear_login_failures(client_id)
        client = self.get(client_id)
        assert client is not None
        return client

    def rotate_secret(self, client_id: str) -> NewClient:
        secret = new_secret()
        client = self.update(client_id, secret_hash=hasher().hash(secret), revoke_tokens=True)
        return NewClient(client, secret)

    # login throttle: per (client id, address), and a ceiling per client id over all addresses
    def throttled_for(self, client_id: str, address: str | None) -> float:
        """Seconds until ``client_id`` may try to log in again from ``address`` (0 = now)."""
        rows = self._rows(select(LoginThrottle.locked_until).where(
            LoginThrottle.client_id.in_(_throttle_keys(client_id, address))))
        until = max((_aware(r["locked_until"]) for r in rows if r["locked_until"]), default=None)
        return max(0.0, (until - utcnow()).total_seconds()) if until else 0.0

    def login_failed(self, client_id: str, address: str | None) -> float:
        """Count a failure; return the lock in seconds it earned (0 = not locked)."""
        by_address, by_id = _throttle_keys(client_id, address)
        return max(self._count_failure(by_address, THROTTLE_FAILURES),
                   self._count_failure(by_id, THROTTLE_CLIENT_FAILURES))

    def login_succeeded(self, client_id: str, address: str | None) -> None:
        """A success clears the failures of its address; the id's ceiling keeps counting the others."""
        self.store._run(delete(LoginThrottle).where(
            LoginThrottle.client_id == _throttle_keys(client_id, address)[0]))

    def clear_login_failures(self, client_id: str) -> None:
        """Lift every lockout of ``client_id`` (all addresses and the ceiling)."""
        by_id = _throttle_keys(client_id, None)[1]
        self.store._run(delete(LoginThrottle).where(
            (LoginThrottle.client_id == by_id)
            | (LoginThrottle.client_id.startswith("ip:") & LoginThrottle.client_id.endswith(
                " " + by_id[3:], autoescape=True))))

    def _count_failure(self, key: str, threshold: int) -> float:
        now = utcnow()
        rows = self._rows(select(LoginThrottle.__table__).where(LoginThrottle.client_id == key))
        if not rows or (now - _aware(rows[0]["window_start"])).total_seconds() > THROTTLE_WINDOW_S:
            failures, window_start = 1, now
        else:
            failures, window_start = rows[0]["failures"] + 1, _aware(rows[0]["window_start"])
        lock_s = 0.0
        if failures >= threshold:
            lock_s = min(THROTTLE_LOCK_MAX_S, THROTTLE_LOCK_S * 2 ** min(failures - threshold, 10))
        values = {"failures": failures, "window_start": window_start,
                  "locked_until": now + timedelta(seconds=lock_s) if lock_s else None}
        if rows:
            self.store._run(update(LoginThrottle).where(LoginThrottle.client_id == key).values(**values))
        else:
            try:
                self.store._run(LoginThrottle.__table__.insert().values(client_id=key, **values))
            except IntegrityError:   # a concurrent first failure: count this one on top
                self.store._run(update(LoginThrottle).where(LoginThrottle.client_id == key)
                                .values(failures=LoginThrottle.failures + 1))
        return lock_s

    # usage
    def record_usage(self, **values: Any) -> None:
        """Write a job's usage record once (a redelivered job's second record is ignored), and settle
        its media reservation: from now on the ledger's real media seconds count for the quota."""
        try:
            self.store._run(UsageRecord.__table__.insert(), values)
        except IntegrityError:
            log.info("usage already recorded", extra={"job_id": values.get("job_uuid")})
        # After the record (never before): a quota check in between counts the job twice, never zero times.
        self.store._run(delete(MediaReservation).where(MediaReservation.job_uuid == values["job_uuid"]))

    def job_ended(self, job: Job, notify: Callable[[str], None] | None) -> None:
        """For a job that ended without a worker measuring a run (revoked in its queue, purged, or
        failed by the lease sweeper): its usage record, with no media or time, and its webhook.

        A pipeline job has no record of its own (its steps have theirs).
        """
        if job.pipeline is None:
            self.record_usage(job_uuid=job.uuid, owner=job.owner, service=job.service, status=job.status,
                              media_seconds=0.0, wall_seconds=0.0, cpu_seconds=0.0, output_bytes=0,
                              created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)
        if job.callback_url and notify is not None:
            notify(job.uuid)

    def usage(self, *, owner: str | None, since: datetime, until: datetime, service: str | None = None,
              group: str = "day") -> list[dict[str, Any]]:
        """Sum usage by period (day or month), owner and service, oldest first."""
        if group not in ("day", "month"):
            raise APIError(204, "group: must be day or month")
        period = _period(self.store.engine.dialect.name, group)
        conditions = [UsageRecord.finished_at >= since, UsageRecord.finished_at < until]
        if owner is not None:
            conditions.append(UsageRecord.owner == owner)
        if service:
            conditions.append(UsageRecord.service == service)
        query = (select(period.label("period"), UsageRecord.owner, UsageRecord.service,
                        func.count().label("jobs"),
                        func.sum(func.cast(UsageRecord.status == "SUCCESS", Integer)).label("succeeded"),
                        func.sum(UsageRecord.media_seconds).label("media_seconds"),
                        func.sum(UsageRecord.wall_seconds).label("wall_seconds"),
                        func.sum(UsageRecord.cpu_seconds).label("cpu_seconds"),
                        func.sum(UsageRecord.output_bytes).label("output_bytes"))
                 .where(*conditions).group_by("period", UsageRecord.owner, UsageRecord.service)
                 .order_by("period", UsageRecord.owner, UsageRecord.service))
        out = []
        for row in self._rows(query):
            out.append({"period": str(row["period"])[: 10 if group == "day" else 7], "owner": row["owner"],
                        "service": row["service"], "jobs": int(row["jobs"]), "succeeded": int(row["succeeded"] or 0),
                        "media_seconds": round(float(row["media_seconds"] or 0), 3),
                        "wall_seconds": round(float(row["wall_seconds"] or 0), 3),
                        "cpu_seconds": round(float(row["cpu_seconds"] or 0), 3),
                        "output_bytes": int(row["output_bytes"] or 0)})
        return out

    def media_use(self, conn, owner: str, since: datetime, service: str | None, now: datetime) -> tuple[float, float]:
        """(media seconds in the ledger since ``since``, seconds reserved by jobs in flight), in one
        statement, so both are read from the same snapshot."""
        processed = select(func.coalesce(func.sum(UsageRecord.media_seconds), 0.0)).where(
            UsageRecord.owner == owner, UsageRecord.finished_at >= since)
        reserved = (select(func.coalesce(func.sum(MediaReservation.seconds), 0.0))
                    .join(Job, Job.uuid == MediaReservation.job_uuid)
                    .where(MediaReservation.owner == owner, _reservation_live(now)))
        if service:
            processed = processed.where(UsageRecord.service == service)
            reserved = reserved.where(MediaReservation.service == service)
        row = conn.execute(select(processed.scalar_subquery(), reserved.scalar_subquery())).one()
        return float(row[0] or 0.0), float(row[1] or 0.0)

    def drop_dead_reservations(self, conn, owner: str, now: datetime) -> None:
        """Forget the owner's reservations whose job is gone or long finished (no usage record came)."""
        live = select(Job.uuid).where(Job.uuid == MediaReservation.job_uuid, _reservation_live(now)).exists()
        conn.execute(delete(MediaReservation).where(MediaReservation.owner == owner, ~live))


def _reservation_live(now: datetime):
    """A reservation counts while its job is unfinished, or just finished with its usage record on the way
    (a pipeline never gets one: its steps are billed)."""
    return or_(Job.finished_at.is_(None),
               and_(Job.finished_at > now - timedelta(seconds=RESERVATION_GRACE_S), Job.pipeline.is_(None)))


def _throttle_keys(client_id: str, address: str | None) -> tuple[str, str]:
    """The throttle's keys for a login attempt: per (address, id), and per id."""
    cid = client_id[:150]
    where = "".join(c if c.isprintable() and not c.isspace() else "_" for c in (address or "-")[:45])
    return f"ip:{where} {cid}", f"id:{cid}"


def _period(dialect: str, group: str):
    if dialect == "postgresql":
        pattern = "YYYY-MM-DD" if group == "day" else "YYYY-MM"
        return func.to_char(func.timezone("UTC", UsageRecord.finished_at), pattern)
    return func.strftime("%Y-%m-%d" if group == "day" else "%Y-%m", UsageRecord.finished_at)


def in_flight_condition():
    return Job.finished_at.is_(None)


# -- validation shared by `sg clients` and /admin/clients -----------------------------------------
def check_scopes(scopes: Any, services: set[str]) -> list[str]:
    """Return valid scopes (service names, ``*``, ``admin``) or raise 204 naming the bad one."""
    if isinstance(scopes, str):
        scopes = [s.strip() for s in scopes.split(",") if s.strip()]
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise APIError(204, "scopes: must be a list of service names, '*' or 'admin'")
    for scope in scopes:
        if scope not in services and scope not in (ALL_SERVICES, ADMIN_SCOPE):
            raise APIError(204, f"scopes: unknown service {scope!r}; GET /services lists them ('*' = all)")
    return sorted(set(scopes))


def check_quotas(quotas: Any, services: set[str]) -> dict[str, Any]:
    """Return valid quotas (see service_gateway.quotas) or raise 204 naming the bad field."""
    if not isinstance(quotas, dict):
        raise APIError(204, "quotas: must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in quotas.items():
        if key == "services":
            if not isinstance(value, dict):
                raise APIError(204, "quotas.services: must map service names to quota objects")
            per_service = {}
            for service, limits in value.items():
                if service not in services:
                    raise APIError(204, f"quotas.services: unknown service {service!r}")
                per_service[service] = _check_limits(limits, f"quotas.services.{service}")
            out["services"] = per_service
        else:
            out.update(_check_limits({key: value}, "quotas"))
    return out


def _check_limits(limits: Any, where: str) -> dict[str, Any]:
    if not isinstance(limits, dict):
        raise APIError(204, f"{where}: must be a JSON object")
    out = {}
    for key, value in limits.items():
        if key not in QUOTAS:
            raise APIError(204, f"{where}.{key}: unknown quota; known: {', '.join(QUOTAS)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise APIError(204, f"{where}.{key}: must be a number >= 0, or null for no limit")
        if value is not None:
            out[key] = value
    return out


def set_quota(quotas: dict[str, Any], name: str, value: float | None, service: str | None) -> dict[str, Any]:
    """Return ``quotas`` with one limit set (None removes it), for `sg clients set-quota`."""
    quotas = {k: (dict(v) if isinstance(v, dict) else v) for k, v in quotas.items()}
    target = quotas.setdefault("services", {}).setdefault(service, {}) if service else quotas
    if value is None:
        target.pop(name, None)
    else:
        target[name] = value
    if service and not quotas["services"][service]:
        del quotas["services"][service]
    if not quotas.get("services"):
        quotas.pop("services", None)
    return quotas
