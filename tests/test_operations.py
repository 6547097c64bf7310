"""Operating it: /infrastructure and `sg infra` with a real backlog, and the admin queue/worker/job routes."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.stack import BIN, wait_for

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
