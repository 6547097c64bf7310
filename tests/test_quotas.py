"""Quotas against the job store itself (SQLite and PostgreSQL): media minutes, per-service limits, reporting."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from service_gateway.clients import Clients, check_quotas, set_quota
from service_gateway.errors import APIError
from service_gateway.quotas import QuotaExceeded, add_job_within_quotas, quota_usage
from service_gateway.store import utcnow
from tests.test_store import store  # noqa: F401 - the parametrized SQLite/PostgreSQL fixture


def job(owner: str, service: str = "probe") -> dict:
    return {"uuid": str(uuid.uuid4()), "owner": owner, "service": service, "queue": service, "status": "PENDING",
            "doc_url": "file:///x", "params": {}, "misc": {}, "progress": 0, "cancel_requested": False}


def finished_usage(store, owner: str, media_seconds: float, days_ago: float = 0) -> None:  # noqa: F811
    when = utcnow() - timedelta(days=days_ago)
    Clients(store).record_usage(job_uuid=str(uuid.uuid4()), owner=owner, service="probe", status="SUCCESS",
                                media_seconds=media_seconds, wall_seconds=1, cpu_seconds=1, output_bytes=0,
                                created_at=when, started_at=when, finished_at=when)


def test_monthly_media_minutes_count_what_was_processed_this_month(store):  # noqa: F811
    quotas = {"max_media_minutes_per_month": 10}
    finished_usage(store, "m", 9 * 60)
    finished_usage(store, "m", 30 * 60, days_ago=40)          # last month or before: not counted
    add_job_within_quotas(store, quotas, job("m"))            # 9 of 10 minutes used: accepted
    finished_usage(store, "m", 60)
    with pytest.raises(QuotaExceeded) as refused:
        add_job_within_quotas(store, quotas, job("m"))
    assert refused.value.status == 429 and refused.value.used == 10.0 and refused.value.limit == 10
    assert "max_media_minutes_per_month" in refused.value.description
    assert int(refused.value.headers["Retry-After"]) <= 31 * 86400


def test_per_service_limits_apply_to_their_service_only(store):  # noqa: F811
    quotas = {"max_in_flight": 3, "services": {"transcode": {"max_in_flight": 1}}}
    add_job_within_quotas(store, quotas, job("s", "transcode"))
    with pytest.raises(QuotaExceeded, match="max_in_flight for transcode"):
        add_job_within_quotas(store, quotas, job("s", "transcode"))
    add_job_within_quotas(store, quotas, job("s", "probe"))
    with pytest.raises(QuotaExceeded, match=r"quota max_in_flight reached: 2 jobs used"):
        add_job_within_quotas(store, {"max_in_flight": 2}, job("s", "probe"))
    report = quota_usage(store, "s", quotas)
    assert report == {"max_in_flight": {"used": 2, "limit": 3},
                      "max_in_flight for transcode": {"used": 1, "limit": 1}}


def test_quota_documents_are_validated_and_edited_by_name():
    services = {"probe", "transcode"}
    quotas = set_quota({}, "max_in_flight", 2, None)
    quotas = set_quota(quotas, "max_jobs_per_day", 10, "transcode")
    assert check_quotas(quotas, services) == {"max_in_flight": 2, "services": {"transcode": {"max_jobs_per_day": 10}}}
    assert set_quota(quotas, "max_jobs_per_day", None, "transcode") == {"max_in_flight": 2}
    for bad in ({"max_inflight": 1}, {"max_in_flight": -1}, {"max_in_flight": True},
                {"services": {"nope": {"max_in_flight": 1}}}, {"services": []}):
        with pytest.raises(APIError) as error:
            check_quotas(bad, services)
        assert error.value.code == 204
