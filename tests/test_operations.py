"""Operating it: /infrastructure and `sg infra`, the admin routes, SG_PROXY_HOPS and `sg db upgrade`."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import datetime, timezone
from typing import Iterator

import pytest
from sqlalchemy import text

from tests.conftest import JWT_SECRET, need
from tests.stack import BIN, Stack, drop_postgres_database, port_open, postgres_database, wait_for

pytestmark = pytest.mark.e2e


def admin(stack) -> dict[str, str]:
    return stack.headers("ops", admin=True)


def infra(stack) -> dict[str, dict]:
    answer = stack.session.get(f"{stack.url}/infrastructure", headers=admin(stack), timeout=30)
    assert answer.status_code == 200, answer.text
    return {q["queue"]: q for q in answer.json()["queues"]}


def test_infrastructure_reports_an_exact_backlog_and_recommends_workers(stack, media):
    # Given a queue with no worker and 5 jobs waiting
    stack.stop_worker()
    try:
        ids = [stack.submit("probe", f"file://{media}/short.mp4", sub="infra") for _ in range(5)]
        probe = wait_for(lambda: (q := infra(stack)["probe"])["backlog"] == 5 and q, 30, "the backlog of 5")
        # Then it is counted exactly (from RabbitMQ itself, or the embedded broker's file), nobody consumes,
        # and at least one process is recommended, with the reasoning
        assert probe["worker_processes"] == 0 and probe["running"] == 0
        if stack.name == "rabbitmq":
            assert probe["consumers"] == 0 and probe["source"] == "rabbitmq"
        assert probe["recommended_worker_processes"] >= 1 and "5 waiting" in probe["reasoning"]
        cli = subprocess.run([str(BIN / "sg"), "infra", "--json"], env=stack.env, capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert {q["queue"]: q for q in json.loads(cli.stdout)["queues"]}["probe"]["backlog"] == 5
        table = subprocess.run([str(BIN / "sg"), "infra"], env=stack.env, capture_output=True, text=True,
                               timeout=60).stdout
        assert "probe" in table and "5 waiting" in table
    finally:
        stack.start_worker()
    # When the worker drains it, throughput and mean duration appear and the backlog is gone
    for job_id in ids:
        stack.wait_status("probe", job_id, {"SUCCESS"}, sub="infra")
    probe = wait_for(lambda: (q := infra(stack)["probe"])["backlog"] == 0 and q, 30, "the drained queue")
    assert probe["throughput_per_min"] > 0 and probe["mean_duration_s"] > 0
    assert probe["worker_processes"] >= 1 and probe["workers"][0]["concurrency"] >= 1


def test_the_backlog_counts_the_jobs_a_busy_worker_holds_but_has_not_started(stack, media):
    """Prefetched messages left the broker's queue but wait all the same: backlog + running = unfinished."""
    ids = [stack.submit("transcode", f"file://{media}/medium.mp4", sub="busy", preset="webm-vp9", speed="slow")
           for _ in range(5)]                                    # the stack's worker runs 2 at a time
    try:
        def settled():
            q = infra(stack)["transcode"]
            return q if q["running"] == 2 and q["backlog"] + q["running"] == 5 else None
        transcode = wait_for(settled, 60, "2 running and 3 waiting")
        assert transcode["in_queue"] + transcode["held_by_workers"] == transcode["backlog"] == 3
        assert "3 waiting" in transcode["reasoning"]
    finally:
        for job_id in ids:
            stack.request("DELETE", f"/jobs/{job_id}", sub="busy")


def test_admin_sees_queues_workers_and_jobs_in_progress(stack, media):
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="slow")
    stack.wait_status("transcode", job_id, {"PROGRESS"})
    try:
        workers = stack.session.get(f"{stack.url}/admin/workers", headers=admin(stack), timeout=30).json()["workers"]
        assert any(job_id in w["active_jobs"] and "transcode" in w["queues"] for w in workers)
        running = stack.session.get(f"{stack.url}/admin/jobs/in-progress", headers=admin(stack), timeout=30).json()
        (job,) = [j for j in running["jobs"] if j["uuid"] == job_id]
        assert job["lease_owner"] and job["attempts"] == 1
        queues = {q["queue"]: q for q in stack.session.get(f"{stack.url}/admin/queues", headers=admin(stack),
                                                           timeout=30).json()["queues"]}
        assert set(queues) >= {"probe", "transcode"} and queues["transcode"]["services"] == ["transcode"]
        refused = stack.session.get(f"{stack.url}/admin/workers", headers=stack.headers("someone"), timeout=30)
        assert (refused.status_code, refused.json()["code"]) == (403, 223)
    finally:
        stack.request("DELETE", f"/jobs/{job_id}")


def test_purge_needs_confirmation_and_revokes_the_waiting_jobs(stack, media):
    stack.stop_worker()
    try:
        ids = [stack.submit("probe", f"file://{media}/short.mp4", sub="purge") for _ in range(3)]
        url = f"{stack.url}/admin/queues/probe/purge"
        unconfirmed = stack.session.post(url, json={}, headers=admin(stack), timeout=30)
        assert (unconfirmed.status_code, unconfirmed.json()["code"]) == (400, 206)
        done = stack.session.post(url, json={"confirm": "probe"}, headers=admin(stack), timeout=30).json()
        assert done["jobs_revoked"] >= 3
        for job_id in ids:
            body = stack.status("probe", job_id, sub="purge")
            assert body["status"] == "REVOKED" and body["result"]["code"] == 109
    finally:
        stack.start_worker()
    later = stack.submit("probe", f"file://{media}/short.mp4", sub="purge")
    assert stack.wait_status("probe", later, {"SUCCESS", "FAILURE"}, sub="purge")["status"] == "SUCCESS"


# -- behind a reverse proxy: SG_PROXY_HOPS ------------------------------------------------------------
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.org", "X-Forwarded-Prefix": "/media",
             "X-Forwarded-For": "203.0.113.7"}


def submit_and_finish(stack, base: str, media) -> tuple[str, list[str]]:
    """Submit a transcode through ``base`` as a proxy would forward it; (Location, output URLs) it answers."""
    headers = {**stack.headers("proxied"), **FORWARDED}
    answer = stack.session.post(f"{base}/transcode/process", headers=headers, timeout=30,
                                json={"doc_url": f"file://{media}/short.mp4", "params": {"preset": "mp4-360p"}})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["uuid"]
    stack.wait_status("transcode", job_id, {"SUCCESS"}, sub="proxied")
    done = stack.session.get(f"{base}/transcode/status", params={"uuid": job_id}, headers=headers, timeout=30)
    assert done.status_code == 200, done.text
    urls = [o["url"] for o in done.json()["result"]["outputs"]]
    assert urls and all(f"/jobs/{job_id}/outputs/" in url for url in urls)
    return answer.headers["Location"], urls


def test_forwarded_headers_count_only_with_sg_proxy_hops(stack, media):
    # The stack's gateway has no SG_PROXY_HOPS: a client's X-Forwarded-* are ignored
    location, urls = submit_and_finish(stack, stack.url, media)
    assert location.startswith("/transcode/status?uuid=")
    assert all(url.startswith(f"{stack.url}/jobs/") for url in urls), urls
    # A second gateway on the same broker and store, behind one proxy: its headers make the public URLs
    proxied = Stack(stack.name, {**stack.env, "SG_PROXY_HOPS": "1"}, stack.work_dir)
    try:
        proxied.start_gateway()
        location, urls = submit_and_finish(stack, proxied.url, media)
    finally:
        proxied.stop()
    assert location.startswith("/media/transcode/status?uuid=")
    assert all(url.startswith("https://gw.example.org/media/jobs/") for url in urls), urls


# -- sg db upgrade ------------------------------------------------------------------------------------
FIRST_REVISION = "0001"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request, tmp_path) -> Iterator[dict[str, str]]:
    """The environment of a deployment whose job store is a new, empty database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SG_")}
    env.update(SG_DATA_DIR=str(tmp_path / "data"), SG_JWT_SECRET=JWT_SECRET, SG_LOG_FORMAT="text")
    if request.param == "sqlite":
        yield {**env, "SG_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite'}"}
        return
    need(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    name = postgres_database("sg_upgrade")
    try:
        yield {**env, "SG_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}"}
    finally:
        drop_postgres_database(name)


def sg_db_upgrade(env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "sg"), "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from service_gateway.migrations import alembic_config
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_sg_db_upgrade_makes_a_fresh_database_and_upgrades_an_old_one(fresh_database, tmp_path):
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from service_gateway.migrations import alembic_config, current
    from service_gateway.store import Base
    url = fresh_database["SG_DATABASE_URL"]
    head = head_revision()
    assert head != FIRST_REVISION
    # A fresh database: every table of the code, at the newest revision
    assert sg_db_upgrade(fresh_database) == f"job store at revision {head}"
    engine = create_engine(url)
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        assert sg_db_upgrade(fresh_database) == f"job store at revision {head}"        # again: nothing to do
        # Back to the first release's schema, with a job it recorded
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), FIRST_REVISION)
        assert current(engine) == FIRST_REVISION
        assert "clients" not in inspect(engine).get_table_names()
        old_job = str(uuid.uuid4())
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO jobs (uuid, owner, service, queue, status, doc_url, params, misc, progress, "
                              "cancel_requested, error_code, error_message, created_at, finished_at) VALUES (:u, "
                              "'old', 'probe', 'probe', 'FAILURE', 'file:///gone.mp4', '{}', '{}', 0, false, 301, "
                              "'the document could not be fetched', :t, :t)"),
                         {"u": old_job, "t": datetime.now(timezone.utc)})
        # sg db upgrade brings it to the newest revision, the old job kept
        assert sg_db_upgrade(fresh_database) == f"job store at revision {head}"
        assert current(engine) == head
    finally:
        engine.dispose()
    # and the gateway works on it: old records, new submits with an Idempotency-Key, clients
    gateway = Stack("upgraded", fresh_database, tmp_path)
    try:
        gateway.start_gateway()
        body = gateway.status("probe", old_job, sub="old")
        assert body["status"] == "FAILURE" and body["result"] == {"code": 301,
                                                                  "message": "the document could not be fetched"}
        assert gateway.request("GET", f"/jobs/{old_job}", sub="old").status_code == 200
        submit = {"doc_url": "http://media.example.org/a.mp4"}
        again = {**gateway.headers("old"), "Idempotency-Key": "k1"}
        first = gateway.request("POST", "/probe/process", json=submit, headers=again)
        second = gateway.request("POST", "/probe/process", json=submit, headers=again)
        assert first.status_code == 202 and second.json()["uuid"] == first.json()["uuid"]
        made = gateway.request("POST", "/admin/clients", sub="ops", admin=True,
                               json={"name": "upgraded", "scopes": ["probe"]})
        assert made.status_code == 201, made.text
    finally:
        gateway.stop()
