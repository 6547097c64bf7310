"""The job store's compare-and-set writes, on SQLite and PostgreSQL."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from service_gateway.status import JobStatus
from service_gateway.store import JobStore
from tests.conftest import need
from tests.stack import drop_postgres_database, port_open, postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield _migrated(JobStore(f"sqlite:///{tmp_path}/jobs.sqlite"))
        return
    need(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    name = postgres_database()
    store = _migrated(JobStore(f"postgresql://postgres@127.0.0.1:5432/{name}"))
    yield store
    store.engine.dispose()
    drop_postgres_database(name)


def _migrated(store: JobStore) -> JobStore:
    store.migrate()
    store.migrate()             # idempotent
    return store


def add_job(store: JobStore, *, owner: str = "alice", service: str = "probe") -> str:
    job_id = str(uuid.uuid4())
    store.add(uuid=job_id, owner=owner, service=service, queue=service, status="PENDING", doc_url="file:///x",
              params={}, misc={}, progress=0, cancel_requested=False)
    return job_id


def test_cancel_of_a_queued_job_revokes_it_and_it_never_starts(store):
    job_id = add_job(store)
    store.request_cancel(job_id)
    job = store.get(job_id)
    assert (job.status, job.error_code, job.cancel_requested) == ("REVOKED", 109, True)
    assert job.finished_at is not None
    assert store.mark_started(job_id, "w1") is False


def test_cancel_of_a_started_job_only_flags_it(store):
    job_id = add_job(store)
    assert store.mark_started(job_id, "w1")
    store.request_cancel(job_id)
    job = store.get(job_id)
    assert (job.status, job.cancel_requested, job.finished_at) == ("STARTED", True, None)
    assert store.cancel_requested(job_id)


def test_racing_cancel_and_start_end_in_exactly_one_consistent_state(store):
    for _ in range(20):
        job_id = add_job(store)
        with ThreadPoolExecutor(2) as pool:
            started = pool.submit(store.mark_started, job_id, "w1")
            pool.submit(store.request_cancel, job_id).result()
        job = store.get(job_id)
        if started.result():
            assert job.status == "STARTED" and job.cancel_requested     # the worker will see the flag
        else:
            assert job.status == "REVOKED" and job.started_at is None


def test_a_job_finishes_once(store):
    job_id = add_job(store)
    store.mark_started(job_id, "w1")
    assert store.finish(job_id, JobStatus.SUCCESS, progress=100)
    assert not store.finish(job_id, JobStatus.FAILURE, progress=3, error=(306, "late"))
    assert store.get(job_id).status == "SUCCESS"


def test_claim_and_finish_return_the_row_they_wrote_in_one_statement(store):
    job_id = add_job(store)
    claimed = store.claim(job_id, "w1", lease_owner="w1:7", lease_s=30)
    assert (claimed.uuid, claimed.status, claimed.attempts, claimed.lease_owner) == (job_id, "STARTED", 1, "w1:7")
    assert claimed.started_at is not None and claimed.lease_until > claimed.started_at
    assert store.claim(job_id, "w2", lease_owner="w2:8") is None            # held by a live lease
    assert store.claim(job_id, "w2", lease_owner="w2:8", dead_owner="w1:7").attempts == 2   # its owner died
    done = store.finish(job_id, JobStatus.SUCCESS, progress=100, lease_owner="w2:8")
    assert (done.status, done.progress, done.lease_owner) == ("SUCCESS", 100, None) and done.finished_at
    assert store.finish(job_id, JobStatus.FAILURE, progress=0) is None


def test_a_pooled_connection_the_server_dropped_is_replaced_before_use(store, monkeypatch):
    """No pre-ping on every checkout: only a connection idle past STALE_AFTER_S is pinged first."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    import psycopg

    from service_gateway import store as store_module
    job_id = add_job(store)
    assert store.get(job_id) is not None                       # a connection now waits in the pool
    database = store.engine.url.database
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()[0]
    assert killed >= 1
    monkeypatch.setattr(store_module, "STALE_AFTER_S", 0.0)   # as if it had sat idle past the bound
    assert store.get(job_id).uuid == job_id                    # pinged, found dead, replaced: no error


def test_pages_are_newest_first_and_complete(store):
    ids = [add_job(store, owner="pager") for _ in range(7)]
    add_job(store, owner="someone-else")
    seen, cursor = [], None
    while True:
        page, cursor = store.list(owner="pager", limit=3, cursor=cursor)
        seen += [j.uuid for j in page]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_pages_oldest_first_are_the_same_jobs_in_reverse(store):
    ids = [add_job(store, owner="sorter") for _ in range(5)]
    seen, cursor = [], None
    while True:
        page, cursor = store.list(owner="sorter", limit=2, cursor=cursor, oldest_first=True)
        seen += [j.uuid for j in page]
        if not cursor:
            break
    assert seen == ids
