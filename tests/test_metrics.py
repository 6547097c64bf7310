"""Prometheus metrics and request ids, end to end: gunicorn's two processes add up, workers export theirs."""
from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import BIN, wait_for

pytestmark = pytest.mark.e2e


def scrape(url: str, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    answer = requests.get(url, headers=headers or {}, timeout=30)
    assert answer.status_code == 200, answer.text
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_across_gunicorn_processes_and_workers(stack, media):
    admin = stack.headers("prometheus", admin=True)
    before = scrape(f"{stack.url}/metrics", admin)
    # 6 submits land on both gunicorn processes (2 x gthread); one is refused by a bad token
    ids = [stack.submit("probe", f"file://{media}/short.mp4", sub="metrics") for _ in range(6)]
    for job_id in ids:
        stack.wait_status("probe", job_id, {"SUCCESS"}, sub="metrics")
    requests.get(f"{stack.url}/jobs", headers={"Authorization": "Bearer nope.nope.nope"}, timeout=30)

    def finished_counted():
        # shared-state figures are cached a few seconds per process: wait for the scrape that has them
        now = scrape(f"{stack.url}/metrics", admin)
        done = value(now, "sg_jobs_finished_total", service="probe", status="SUCCESS") - \
            value(before, "sg_jobs_finished_total", service="probe", status="SUCCESS")
        return now if done >= 6 else None
    after = wait_for(finished_counted, 30, "the finished jobs in /metrics", interval_s=0.5)

    assert value(after, "sg_jobs_submitted_total", service="probe") - \
        value(before, "sg_jobs_submitted_total", service="probe") == 6
    assert value(after, "sg_auth_failures_total", reason="InvalidToken") >= 1
    submit_count = sum(v for (name, labels), v in after.items()
                       if name == "sg_http_request_duration_seconds_count" and ("route", "/<svc>/process") in labels)
    assert submit_count >= 6
    assert ("sg_queue_depth", (("queue", "probe"),)) in after
    assert value(after, "sg_queue_consumers", queue="probe") >= 1
    assert ("sg_jobs_in_flight", (("service", "transcode"),)) in after
    assert value(after, "sg_dependencies_up") == 1

    # The worker serves its own: job durations and queue waits per service
    worker = f"http://127.0.0.1:{stack.env['SG_WORKER_METRICS_PORT']}/metrics"
    wait_for(lambda: value(scrape(worker), "sg_job_duration_seconds_count", service="probe", status="SUCCESS") >= 6,
             30, "the worker's job durations")
    assert value(scrape(worker), "sg_job_queue_wait_seconds_count", service="probe") >= 6


def test_metrics_need_an_admin_token(stack):
    assert requests.get(f"{stack.url}/metrics", timeout=30).status_code == 401
    assert requests.get(f"{stack.url}/metrics", headers=stack.headers("someone"), timeout=30).status_code == 403


def test_a_request_id_follows_the_job_into_the_worker_log(stack, media):
    request_id = "trace-0123456789"
    answer = stack.session.post(f"{stack.url}/probe/process", json={"doc_url": f"file://{media}/short.mp4"},
                                headers={**stack.headers(), "X-Request-ID": request_id}, timeout=30)
    assert answer.status_code == 202 and answer.headers["X-Request-ID"] == request_id
    job_id = answer.json()["uuid"]
    stack.wait_status("probe", job_id, {"SUCCESS"})
    lines = [json.loads(line) for line in stack.worker_log_lines(job_id, "job succeeded")]
    assert lines and lines[0]["request_id"] == request_id and lines[0]["job_id"] == job_id
    gateway_log = (stack.work_dir / "gateway.log").read_text(errors="replace")
    assert re.search(rf'"request_id": "{request_id}"', gateway_log)           # the JSON access log line
    fresh = stack.session.get(f"{stack.url}/health", headers={"X-Request-ID": "bad id with spaces"}, timeout=30)
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["X-Request-ID"])        # replaced, not echoed


def test_a_quota_refusal_is_counted_by_its_quota(stack, media):
    # A client allowed one job a day
    made = subprocess.run([str(BIN / "sg"), "clients", "add", f"metered-{uuid.uuid4().hex[:6]}", "--scopes", "probe",
                           "--quota", "max_jobs_per_day=1", "--json"], env=stack.env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    creds = json.loads(made.stdout)
    issued = requests.post(f"{stack.url}/auth/access-token", timeout=30,
                           data={"client_id": creds["client_id"], "secret": creds["secret"]})
    assert issued.status_code == 200, issued.text
    client = {"Authorization": f"Bearer {issued.json()['access_token']}"}
    admin = stack.headers("prometheus", admin=True)
    before = value(scrape(f"{stack.url}/metrics", admin), "sg_quota_refusals_total", quota="max_jobs_per_day")
    submit = {"doc_url": f"file://{media}/short.mp4"}
    assert requests.post(f"{stack.url}/probe/process", json=submit, headers=client, timeout=30).status_code == 202
    refused = requests.post(f"{stack.url}/probe/process", json=submit, headers=client, timeout=30)
    assert (refused.status_code, refused.json()["code"]) == (429, 401), refused.text
    # The counter is the gateway process's own (no cache): whichever gunicorn process answered, the sum has it
    after = value(scrape(f"{stack.url}/metrics", admin), "sg_quota_refusals_total", quota="max_jobs_per_day")
    assert after - before == 1
