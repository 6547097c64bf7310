"""Webhooks: a job's final status POSTed to its callback_url, signed, retried, every attempt recorded.

Signature (as Stripe and GitHub do it): ``X-SG-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
with ``X-SG-Timestamp`` (Unix seconds). The secret is the job owner's webhook secret
(``GET /auth/webhook-secret``): derived from SG_JWT_SECRET, the owner and its token version, so
rotating a client's secret rotates its webhook secret too, and nothing more is stored.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from .store import Base, JobStore, utcnow
from .urls import URLRefused, check_doc_url

log = logging.getLogger(__name__)


class Delivery(Base):
    """One attempt to deliver a job's final status to its callback_url."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_uuid: Mapped[str] = mapped_column(String(36))
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_dict(self) -> dict[str, Any]:
        from .store import _iso
        return {"attempt": self.attempt, "url": self.url, "status_code": self.status_code, "error": self.error,
                "duration_ms": self.duration_ms, "delivered_at": _iso(self.delivered_at),
                "ok": self.status_code is not None and 200 <= self.status_code < 300}


def webhook_secret(server_secret: str, owner: str, version: int = 0) -> str:
    """The owner's webhook signing secret (derived: rotate the client's secret and it changes)."""
    digest = hmac.new(server_secret.encode(), f"sg-webhook:{owner}:{version}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def check_callback_url(url: str, allow_private: bool) -> None:
    """The same safety rules as doc_url: http(s) only, no private addresses unless allowed.

    Raises:
        URLRefused: with the reason.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise URLRefused("must be an http or https URL")
    check_doc_url(url, file_roots=[], allow_private=allow_private)


def deliveries(store: JobStore, job_uuid: str) -> list[Delivery]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(Delivery.__table__).where(Delivery.job_uuid == job_uuid)
                            .order_by(Delivery.id)).mappings().all()
    return [Delivery(**r) for r in rows]


def deliver(store: JobStore | None, settings, job_uuid: str, url: str, body: dict[str, Any], secret: str,
            attempt: int) -> bool:
    """POST ``body`` to ``url`` once, signed; record the attempt (unless ``store`` is None: a progress
    delivery); True on a 2xx answer."""
    import requests

    payload = json.dumps(body, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "service-gateway-webhook/1",
               "X-SG-Timestamp": str(timestamp), "X-SG-Signature": sign(secret, timestamp, payload),
               "X-SG-Job": job_uuid, "X-SG-Delivery-Attempt": str(attempt)}
    started = time.monotonic()
    status_code, error = None, None
    try:
        check_callback_url(url, settings.allow_private_urls)   # re-checked: the settings may have changed
        from .pinned_http import pinned_session
        # Resolves the host now, checks its addresses and connects to them (DNS may have changed).
        session, _ = pinned_session(settings.allow_private_urls)
        with session:
            answer = session.post(url, data=payload, headers=headers, allow_redirects=False,
                                  timeout=(settings.webhook_timeout_s, settings.webhook_timeout_s))
            status_code = answer.status_code
    except URLRefused as exc:
        error = f"callback_url refused: {exc}"
    except requests.RequestException as exc:
        error = exc.__class__.__name__
    if store is not None:
        store._run(Delivery.__table__.insert().values(
            job_uuid=job_uuid, attempt=attempt, url=url, status_code=status_code, error=error,
            duration_ms=int((time.monotonic() - started) * 1000), delivered_at=utcnow()))
    ok = status_code is not None and 200 <= status_code < 300
    log.info("webhook %s attempt %d: %s", "final" if store is not None else "progress", attempt,
             status_code or error, extra={"job_id": job_uuid})
    return ok


class ProgressCallbacks:
    """Progress deliveries of the jobs one worker process runs (``callback_progress``): throttled,
    monotonic, best effort, and never on the job's thread.

    The job's thread only hands its latest value over (:meth:`update`, no I/O). One sender thread
    per process POSTs ``{"event": "progress", "uuid", "status", "progress"}``, signed as the final
    delivery is, at most once per job every SG_WEBHOOK_PROGRESS_INTERVAL_S, the latest value only
    (values in between are skipped), one attempt each, not recorded. When the job ends,
    :meth:`close` drops what was not sent, and :meth:`then` queues the final delivery only once a
    progress POST still in flight has returned: no progress delivery ever follows the final one.

    Args:
        settings: resolved settings (interval, timeout, URL rules).
        secret_of: the webhook secret of a job's owner (read on the sender thread).
        post: sends one delivery (:func:`deliver` without a store; replaced in tests).
    """

    def __init__(self, settings, secret_of: Callable[[str], str],
                 post: Callable[..., bool] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._secret_of = secret_of
        self._post = post or (lambda *args: deliver(None, settings, *args, attempt=1))
        self._clock = clock
        self._cond = threading.Condition()
        self._jobs: dict[str, _Target] = {}
        self._inflight: str | None = None
        self._deferred: dict[str, list[Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None

    def open(self, job_id: str, url: str, owner: str, progress: int = 0) -> None:
        """Start sending the job's progress (above ``progress``, what an earlier attempt reached)."""
        with self._cond:
            self._jobs[job_id] = _Target(url=url, owner=owner, sent=progress)

    def update(self, job_id: str, progress: int) -> None:
        """The job's progress rose to ``progress``: send it when its turn comes (never blocks on I/O)."""
        with self._cond:
            target = self._jobs.get(job_id)
            if target is None or progress <= max(target.sent, target.pending or 0):
                return
            target.pending = progress
            if self._thread is None or not self._thread.is_alive():   # started in the process that sends
                self._thread = threading.Thread(target=self._loop, name="sg-webhook-progress", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, job_id: str) -> None:
        """The job ended: nothing more is sent for it (a value waiting for its turn is dropped)."""
        with self._cond:
            self._jobs.pop(job_id, None)

    def then(self, job_id: str, action: Callable[[], None]) -> None:
        """Run ``action`` (queue the final delivery) now, or on the sender thread as soon as the
        job's progress POST in flight has returned."""
        with self._cond:
            if self._inflight == job_id:
                self._deferred.setdefault(job_id, []).append(action)
                return
        action()

    def _next(self) -> tuple[str, _Target, int]:
        """Wait for the job whose pending value is due first; take it (under the lock)."""
        interval = self.settings.webhook_progress_interval_s
        while True:
            now = self._clock()
            waiting = [(t.last + interval, job_id, t) for job_id, t in self._jobs.items() if t.pending is not None]
            if waiting:
                due, job_id, target = min(waiting, key=lambda w: w[0])
                if due <= now:
                    value, target.sent, target.pending, target.last = target.pending, target.pending, None, now
                    self._inflight = job_id
                    return job_id, target, value
                self._cond.wait(due - now)
            else:
                self._cond.wait()

    def _loop(self) -> None:
        while True:
            with self._cond:
                job_id, target, value = self._next()
            try:
                if target.secret is None:
                    target.secret = self._secret_of(target.owner)
                body = {"event": "progress", "uuid": job_id, "status": "PROGRESS", "progress": value}
                self._post(job_id, target.url, body, target.secret)
            except Exception as exc:   # best effort: the job and its final delivery go on
                log.warning("progress delivery failed: %s", exc.__class__.__name__, extra={"job_id": job_id})
            finally:
                with self._cond:
                    self._inflight = None
                    actions = self._deferred.pop(job_id, [])
            for action in actions:
                try:
                    action()
                except Exception as exc:
                    log.error("final delivery not queued: %s", exc.__class__.__name__, extra={"job_id": job_id})


@dataclass
class _Target:
    url: str
    owner: str
    sent: int = 0                       # highest value sent (or reached before this attempt)
    pending: int | None = None          # latest value waiting for its turn
    last: float = float("-inf")         # when the last one was sent
    secret: str | None = None
