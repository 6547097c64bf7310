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
import time
from datetime import datetime
from typing import Any

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


def check_callback_url(url: str, allow_private: bool, resolve: bool = False) -> None:
    """The same safety rules as doc_url: http(s) only, no private addresses unless allowed.

    Raises:
        URLRefused: with the reason.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise URLRefused("must be an http or https URL")
    check_doc_url(url, file_roots=[], allow_private=allow_private, resolve=resolve)


def deliveries(store: JobStore, job_uuid: str) -> list[Delivery]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(Delivery.__table__).where(Delivery.job_uuid == job_uuid)
                            .order_by(Delivery.id)).mappings().all()
    return [Delivery(**r) for r in rows]


def deliver(store: JobStore, settings, job_uuid: str, url: str, body: dict[str, Any], secret: str,
            attempt: int) -> bool:
    """POST ``body`` to ``url`` once, signed; record the attempt; True on a 2xx answer."""
    import requests

    payload = json.dumps(body, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "service-gateway-webhook/1",
               "X-SG-Timestamp": str(timestamp), "X-SG-Signature": sign(secret, timestamp, payload),
               "X-SG-Job": job_uuid, "X-SG-Delivery-Attempt": str(attempt)}
    started = time.monotonic()
    status_code, error = None, None
    try:
        check_callback_url(url, settings.allow_private_urls, resolve=True)   # re-checked: DNS may have changed
        from .pinned_http import pinned_session
        session, _ = pinned_session(settings.allow_private_urls)   # connects to the address it checked
        with session:
            answer = session.post(url, data=payload, headers=headers, allow_redirects=False,
                                  timeout=(settings.webhook_timeout_s, settings.webhook_timeout_s))
            status_code = answer.status_code
    except URLRefused as exc:
        error = f"callback_url refused: {exc}"
    except requests.RequestException as exc:
        error = exc.__class__.__name__
    store._run(Delivery.__table__.insert().values(
        job_uuid=job_uuid, attempt=attempt, url=url, status_code=status_code, error=error,
        duration_ms=int((time.monotonic() - started) * 1000), delivered_at=utcnow()))
    ok = status_code is not None and 200 <= status_code < 300
    log.info("webhook attempt %d: %s", attempt, status_code or error, extra={"job_id": job_uuid})
    return ok
