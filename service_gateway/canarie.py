"""The CANARIE service API: what /info, /<svc>/info, /<svc>/stats and the link routes answer.

Values come from the settings file: the ``[canarie]`` table holds the platform's values and the
defaults of every service, a ``[canarie.services.<name>]`` table overrides them for one service.
A service's ``synopsis`` and ``version`` default to its registry description and version.
``activeWorkers`` and ``invocations`` come from the job store (worker heartbeats, job records).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from . import __version__
from .errors import APIError, SettingsError, Unavailable
from .runtime import Runtime
from .services import ServiceSpec
from .store import Job, WorkerRecord

log = logging.getLogger(__name__)

#: Link route -> the key holding its URL.
LINKS: dict[str, str] = {
    "doc": "docUrl", "releasenotes": "releaseNotesUrl", "support": "supportUrl", "source": "sourceUrl",
    "tryme": "tryMeUrl", "licence": "licenceUrl", "provenance": "provenanceUrl",
}
#: Link route -> what it shows, for the page answered when no URL is published.
LINK_TITLES: dict[str, str] = {
    "doc": "Documentation", "releasenotes": "Release notes", "support": "Support", "source": "Source code",
    "tryme": "Try me", "licence": "Licence", "provenance": "Provenance",
}
TEXT_KEYS = ("name", "synopsis", "version", "institution", "supportEmail", "category", "researchSubject")
TIME_KEYS = ("releaseTime", "lastReset")
KEYS = frozenset({*TEXT_KEYS, *TIME_KEYS, "tags", *LINKS.values()})
#: Keys of ``[canarie]`` that describe the platform itself and are not defaults for the services.
PLATFORM_OWN_KEYS = frozenset({"name", "synopsis", "version"})
#: The CANARIE info fields, in the order they are answered.
INFO_FIELDS = ("name", "synopsis", "version", "institution", "releaseTime", "researchSubject", "supportEmail",
               "category", "tags")
PLATFORM_NAME = "Service Gateway"
PLATFORM_SYNOPSIS = "A REST gateway in front of a Celery cluster for long media jobs."


@dataclass(frozen=True)
class CanarieConfig:
    """The validated ``[canarie]`` table: platform values, per-service overrides, and this process's start."""

    platform: dict[str, Any]
    services: dict[str, dict[str, Any]]
    #: When this gateway process started: the lastReset of a service that has no job yet.
    started_at: datetime

    def values_for(self, service: str) -> dict[str, Any]:
        """Return the platform defaults under the service's own overrides."""
        merged = {k: v for k, v in self.platform.items() if k not in PLATFORM_OWN_KEYS}
        merged.update(self.services.get(service, {}))
        return merged

    def link(self, service: str, page: str) -> str | None:
        """Return the URL a link route redirects to, ``{service}`` filled in; None when none is published."""
        url = self.values_for(service).get(LINKS[page])
        return url.replace("{service}", service) if url else None


def load_config(table: Any, services: Iterable[str], origin: str = "[canarie]") -> CanarieConfig:
    """Validate the ``[canarie]`` table of the settings file.

    Raises:
        SettingsError: a key is unknown or its value malformed; the message names it.
    """
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise SettingsError(f"{origin}: must be a table")
    table = dict(table)
    per_service = table.pop("services", {})
    if not isinstance(per_service, dict) or not all(isinstance(v, dict) for v in per_service.values()):
        raise SettingsError(f"{origin}.services: must hold one table per service, [canarie.services.<name>]")
    platform = _values(table, origin)
    overrides = {name: _values(values, f"{origin}.services.{name}") for name, values in per_service.items()}
    unknown = sorted(set(overrides) - set(services))
    if unknown:
        log.warning("[canarie.services] names no such service: %s", ", ".join(unknown))
    return CanarieConfig(platform, overrides, datetime.now(timezone.utc))


def _values(table: dict[str, Any], origin: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in table.items():
        where = f"{origin} {key}"
        if key not in KEYS:
            raise SettingsError(f"{where}: unknown key; the keys are {', '.join(sorted(KEYS))}")
        if key == "tags":
            out[key] = _tags(raw, where)
        elif key in TIME_KEYS:
            out[key] = _time(raw, where)
        elif key in LINKS.values():
            out[key] = _url(raw, where)
        elif isinstance(raw, str):
            out[key] = raw
        else:
            raise SettingsError(f"{where}: expected a string, got {raw!r}")
    return out


def _tags(raw: Any, where: str) -> list[str]:
    if isinstance(raw, str):
        return [tag.strip() for tag in raw.split(",") if tag.strip()]
    if isinstance(raw, list) and all(isinstance(tag, str) for tag in raw):
        return list(raw)
    raise SettingsError(f"{where}: expected a list of strings, got {raw!r}")


def _time(raw: Any, where: str) -> datetime:
    value = raw
    if isinstance(raw, str):
        try:
            value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            value = None
    elif isinstance(raw, date) and not isinstance(raw, datetime):
        value = datetime(raw.year, raw.month, raw.day)
    if not isinstance(value, datetime):
        raise SettingsError(f"{where}: expected an ISO 8601 time such as 2026-01-15T00:00:00Z, got {raw!r}")
    return utc(value)


def _url(raw: Any, where: str) -> str:
    if isinstance(raw, str) and (raw == "" or raw.startswith(("http://", "https://"))
                                 or (raw.startswith("/") and not raw.startswith("//"))):
        return raw
    raise SettingsError(f"{where}: expected an http(s) URL, a path on this gateway (/...) or \"\" (none), "
                        f"got {raw!r}")


def utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive time (SQLite hands those back) is taken as UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    """Format a time as CANARIE does: ``2026-01-15T00:00:00Z``."""
    return None if value is None else utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def workers_online(rt: Runtime) -> list[WorkerRecord]:
    """Return the workers whose heartbeat is recent (within 3 heartbeat periods, as GET /services)."""
    return rt.store.workers_online(within_s=3 * rt.settings.worker_heartbeat_s)


def active_workers(spec: ServiceSpec, online: list[WorkerRecord]) -> int:
    """Count the live worker processes that consume the service's queue."""
    return sum(1 for worker in online if spec.queue in worker.queues.split(","))


def service_info(cfg: CanarieConfig, spec: ServiceSpec, online: list[WorkerRecord]) -> dict[str, Any]:
    """Return a service's CANARIE info, ``activeWorkers`` last."""
    values = {"name": spec.name, "synopsis": spec.description, "version": spec.version,
              **cfg.values_for(spec.name)}
    info = _info_fields(values)
    info["activeWorkers"] = active_workers(spec, online)
    return info


def platform_info(rt: Runtime, cfg: CanarieConfig) -> dict[str, Any]:
    """Return the gateway's own CANARIE info with the info of every service (``service`` is its route name)."""
    values = {"name": PLATFORM_NAME, "synopsis": PLATFORM_SYNOPSIS, "version": __version__, **cfg.platform}
    info = _info_fields(values)
    online = workers_online(rt)
    info["services"] = [{"service": name, **service_info(cfg, spec, online)} for name, spec in rt.services.items()]
    return info


def _info_fields(values: dict[str, Any]) -> dict[str, Any]:
    info = {key: values.get(key) for key in INFO_FIELDS}
    info["releaseTime"] = iso(info["releaseTime"])
    info["tags"] = list(info["tags"] or [])
    return info


def service_stats(rt: Runtime, cfg: CanarieConfig, spec: ServiceSpec) -> dict[str, Any]:
    """Return ``invocations`` since ``lastReset``; 503 (code 400) when no live worker consumes the service's queue.

    ``lastReset`` is the configured one, else the time of the service's first job, else (no job yet)
    the time this gateway process started.
    """
    if not active_workers(spec, workers_online(rt)):
        within = 3 * rt.settings.worker_heartbeat_s
        raise APIError(400, f"service {spec.name!r} has no live worker: no worker consuming queue {spec.queue!r} "
                            f"has sent a heartbeat in the last {within:g} s; retry later",
                       headers={"Retry-After": str(rt.settings.retry_after_s)})
    since: datetime | None = cfg.values_for(spec.name).get("lastReset")
    count, first = count_invocations(rt, spec.name, since)
    return {"invocations": count, "lastReset": iso(since or first or cfg.started_at)}


def count_invocations(rt: Runtime, service: str, since: datetime | None) -> tuple[int, datetime | None]:
    """Count the jobs of ``service`` created at or after ``since`` (all when None), and return the first one's time."""
    conditions = [Job.service == service]
    if since is not None:
        conditions.append(Job.created_at >= utc(since))   # SQLite compares the stored UTC text
    query = select(func.count(), func.min(Job.created_at)).where(*conditions)
    try:
        with rt.store.engine.connect() as conn:
            count, first = conn.execute(query).one()
    except OperationalError as exc:
        raise Unavailable("job store", rt.settings.retry_after_s) from exc
    return int(count), None if first is None else utc(first)
