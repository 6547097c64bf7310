"""Quotas against the job store itself (SQLite and PostgreSQL): media minutes, per-service limits, reporting;
and, through a real gateway, parallel submits against the media-minutes quota."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from service_gateway.clients import Clients, MediaReservation, check_quotas, set_quota
from service_gateway.errors import APIError
from service_gateway.quotas import IN_FLIGHT_RETRY_AFTER_S, QuotaExceeded, add_job_within_quotas, quota_usage
from service_gateway.settings import load_settings
from service_gateway.status import JobStatus
from service_gateway.store import utcnow
from tests.stack import wait_for
from tests.test_clients import call, new_client, token_for
from tests.test_store import store  # noqa: F401 - the parametrized SQLite/PostgreSQL fixture

MEDIA = "max_media_minutes_per_month"


def job(owner: str, service: str = "probe", **misc) -> dict:
    return {"uuid": str(uuid.uuid4()), "owner": owner, "service": service, "queue": service, "status": "PENDING",
            "doc_url": "file:///x", "params": {}, "misc": misc, "progress": 0, "cancel_requested": False}


def finished_usage(store, owner: str, media_seconds: float, days_ago: float = 0,  # noqa: F811
                   job_uuid: str | None = None) -> None:
    when = utcnow() - timedelta(days=days_ago)
    Clients(store).record_usage(job_uuid=job_uuid or str(uuid.uuid4()), owner=owner, service="probe",
                                status="SUCCESS", media_seconds=media_seconds, wall_seconds=1, cpu_seconds=1,
                                output_bytes=0, created_at=when, started_at=when, finished_at=when)


def finish(store, job_row: dict, media_seconds: float) -> None:  # noqa: F811
    """The job ends as a worker ends it: its row finished, then its usage record with the real media seconds."""
    assert store.finish(job_row["uuid"], JobStatus.SUCCESS, progress=100) is not None
    finished_usage(store, job_row["owner"], media_seconds, job_uuid=job_row["uuid"])


def refused(store, quotas: dict, job_row: dict) -> QuotaExceeded:  # noqa: F811
    with pytest.raises(QuotaExceeded) as error:
        add_job_within_quotas(store, quotas, job_row)
    assert store.get(job_row["uuid"]) is None                  # nothing recorded
    return error.value


def test_monthly_media_minutes_count_what_was_processed_this_month(store):  # noqa: F811
    quotas = {MEDIA: 10}
    finished_usage(store, "m", 9 * 60)
    finished_usage(store, "m", 30 * 60, days_ago=40)          # last month or before: not counted
    first = job("m")
    add_job_within_quotas(store, quotas, first)               # 9 of 10 minutes used: accepted, holds the last one
    error = refused(store, quotas, job("m"))
    assert (error.status, error.used, error.limit) == (429, 10.0, 10)
    assert "1 of them held by jobs in flight" in error.description
    assert int(error.headers["Retry-After"]) == IN_FLIGHT_RETRY_AFTER_S    # the job in flight may settle lower
    finish(store, first, 60)                                  # it processed 1 minute: 10 of 10 now
    error = refused(store, quotas, job("m"))
    assert error.used == 10.0 and "of them held by" not in error.description
    assert 0 < int(error.headers["Retry-After"]) <= 31 * 86400    # only next month helps


def test_declared_durations_are_reserved_then_settled_to_what_was_processed(store):  # noqa: F811
    quotas = {MEDIA: 10}
    a, b = job("d", duration=300), job("d", duration="300")   # the form route sends strings
    add_job_within_quotas(store, quotas, a)
    add_job_within_quotas(store, quotas, b)
    # 10 of 10 minutes held by the two jobs in flight: even one more second is refused
    error = refused(store, quotas, job("d", duration=1))
    assert error.used == 10.0 and "10 of them held by jobs in flight; this job declares 0" in error.description
    assert int(error.headers["Retry-After"]) == IN_FLIGHT_RETRY_AFTER_S
    assert quota_usage(store, "d", quotas) == {MEDIA: {"used": 10.0, "limit": 10}}
    # A finishes having processed 2 minutes: its reservation gives way to the ledger's 2 minutes
    finish(store, a, 120)
    assert quota_usage(store, "d", quotas) == {MEDIA: {"used": 7.0, "limit": 10}}
    add_job_within_quotas(store, quotas, job("d", duration=180))           # 2 + 5 + 3 = 10: fits exactly
    error = refused(store, quotas, job("d", duration=1))
    assert error.used == 10.0
    # A declared job bigger than what is left after the ledger alone waits for next month
    finish(store, b, 300)
    error = refused(store, quotas, job("d", duration=301))
    assert int(error.headers["Retry-After"]) > IN_FLIGHT_RETRY_AFTER_S


def test_an_undeclared_job_holds_all_that_is_left_and_bad_durations_are_refused(store):  # noqa: F811
    quotas = {MEDIA: 10, "services": {"transcode": {MEDIA: 5}}}
    finished_usage(store, "u", 4 * 60)
    undeclared = job("u", "transcode")
    add_job_within_quotas(store, quotas, undeclared)           # holds min(10 - 4, 5 - 0) = 5 minutes
    reservations = Clients(store)._rows(MediaReservation.__table__.select())
    assert [(r["job_uuid"], r["seconds"]) for r in reservations] == [(undeclared["uuid"], 300.0)]
    refused(store, quotas, job("u", "transcode"))              # 5 of transcode's 5 held
    add_job_within_quotas(store, quotas, job("u", "probe", duration=60))   # 4 + 5 + 1 = 10 overall
    assert "max_media_minutes_per_month reached" in refused(store, quotas, job("u", "probe")).description
    for bad in ("abc", -1, 0, True, "nan", "inf", [60]):
        with pytest.raises(APIError) as error:
            add_job_within_quotas(store, quotas, job("u", "probe", duration=bad))
        assert error.value.code == 204 and "misc.duration" in error.value.description
    # Without a media quota, misc stays free-form
    add_job_within_quotas(store, {"max_in_flight": 100}, job("u", "probe", duration="00:10:00"))


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


def test_a_job_failed_by_the_sweeper_gets_its_usage_record_and_webhook(store, tmp_path):  # noqa: F811
    from workers.sdk.executor import recover_expired
    settings = load_settings({"data_dir": str(tmp_path), "max_retries": 0})
    lost = dict(job("w", duration=120), callback_url="https://hooks.example/done")
    add_job_within_quotas(store, {MEDIA: 10}, lost)
    assert store.mark_started(lost["uuid"], "gone-host", lease_owner="gone-host:1", lease_s=-5)
    failed, notified = [], []

    class Sink:
        def failed(self, job_id, state, error):
            failed.append((job_id, state.value, error.code))

    assert recover_expired(store, settings, Sink(), lambda row, countdown: None, on_finished=notified.append) == 1
    assert failed == [(lost["uuid"], "FAILURE", 110)] and notified == [lost["uuid"]]
    usage = Clients(store).usage(owner="w", since=utcnow() - timedelta(days=1), until=utcnow() + timedelta(days=1))
    assert [(u["jobs"], u["succeeded"], u["media_seconds"]) for u in usage] == [(1, 0, 0.0)]
    # Its 2 reserved minutes were released: nothing was processed
    assert quota_usage(store, "w", {MEDIA: 10}) == {MEDIA: {"used": 0.0, "limit": 10}}


@pytest.mark.e2e
def test_parallel_submits_never_overshoot_the_media_minutes_quota(stack, media):
    # Given a client allowed 1 media minute a month, when 10 submits declaring 15 s each race
    creds = new_client(stack, "probe", quota=[f"{MEDIA}=1"])
    token = token_for(stack, creds)
    doc = {"doc_url": f"file://{media}/short.mp4", "duration": "15"}

    def race(n: int, body: dict) -> list:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: call(stack, "POST", "/probe/annotate", token, data=body), range(n)))
    answers = race(10, doc)
    # Then exactly 4 fit (4 x 15 s = the minute); the others get 429 naming the quota
    assert sorted(a.status_code for a in answers) == [202] * 4 + [429] * 6
    body = next(a for a in answers if a.status_code == 429).json()
    assert body["code"] == 401 and MEDIA in body["description"] and "held by jobs in flight" in body["description"]
    # Once they finish, each is settled to what it really processed (the clip lasts 4 s): 16 s used,
    # so two more jobs of 15 s fit, and not three
    owner = creds["client_id"]
    for answer in (a for a in answers if a.status_code == 202):
        stack.wait_status("probe", answer.json()["uuid"], {"SUCCESS"}, sub=owner)
    used = wait_for(lambda: (q := call(stack, "GET", "/usage", token).json()["quotas"][MEDIA])["used"] < 0.4 and q,
                    60, "the usage records to settle the reservations")
    assert used["used"] == 0.3
    assert sorted(a.status_code for a in race(3, doc)) == [202, 202, 429]
    # And jobs that declare nothing run one at a time against the quota
    creds = new_client(stack, "probe", quota=[f"{MEDIA}=1"])
    token = token_for(stack, creds)
    assert sorted(a.status_code for a in race(6, {"doc_url": doc["doc_url"]})) == [202] + [429] * 5
