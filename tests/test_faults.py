"""Faults caused for real: killed workers, RabbitMQ's consumer timeout, broker/backend/store outages,
transient and permanent download faults, idempotent submits, graceful shutdown.

Every test runs on the embedded default and on RabbitMQ + Redis + PostgreSQL where the fault
applies (the embedded default has no server to stop); the services are stopped and started by
the tests themselves and always restarted in ``finally``.
"""
from __future__ import annotations

import http.server
import os
import signal
import subprocess
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from tests.stack import (BIN, postgres, rabbitmq_app, rabbitmq_env, redis_start, redis_stop, wait_for)
from tests.test_e2e_jobs import ffmpeg_children, ffprobe

pytestmark = pytest.mark.e2e

SLOW = {"preset": "mp4-360p", "speed": "medium"}       # a few seconds on the 20 s 720p clip


def only_rabbitmq(stack) -> None:
    if stack.name != "rabbitmq":
        pytest.skip("the embedded default has no broker, backend or database server to stop")


def running(stack, job_id: str, at_least: int = 5) -> None:
    """Wait until the job is really under way: PROGRESS past ``at_least`` and its ffmpeg running."""
    wait_for(lambda: stack.status("transcode", job_id)["progress"] >= at_least, 60, f"{job_id} to make progress")
    wait_for(lambda: ffmpeg_children(job_id), 30, "the job's ffmpeg")


def assert_one_success_and_a_playable_output(stack, job_id: str, tmp_path: Path) -> dict:
    final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=180)
    assert final["status"] == "SUCCESS", final
    wait_for(lambda: len(stack.worker_log_lines(job_id, "job succeeded")) >= 1, 10, "the success log line")
    assert len(stack.worker_log_lines(job_id, "job succeeded")) == 1        # never SUCCESS twice
    (output,) = final["result"]["outputs"]
    data = stack.request("GET", output["url"][len(stack.url):]).content
    assert len(data) == output["size"]
    (tmp_path / "out.mp4").write_bytes(data)
    assert abs(float(ffprobe(tmp_path / "out.mp4")["format"]["duration"]) - 20.0) < 0.2
    return stack.request("GET", f"/jobs/{job_id}").json()


def test_a_killed_pool_process_is_noticed_by_its_lease_and_the_job_reruns_once(stack, media, tmp_path):
    # Given a transcode under way in a pool process
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", **SLOW)
    running(stack, job_id)
    (ffmpeg,) = ffmpeg_children(job_id)
    pool_process = ffmpeg.parent()
    seen: list[dict] = []
    # When that process is SIGKILLed (as the OOM killer would)
    pool_process.kill()
    # Then the lease expires, the job is run again and ends SUCCESS once, with a whole output
    stack.wait_status("transcode", job_id, {"SUCCESS"}, timeout_s=180, seen=seen)
    record = assert_one_success_and_a_playable_output(stack, job_id, tmp_path)
    assert record["attempts"] == 2 and "stopped renewing the lease" in (record["note"] or "")
    progress = [b["progress"] for b in seen]
    assert progress == sorted(progress)                                     # never went back
    assert not list((stack.settings.output_dir / job_id).glob(".*.part"))   # no half-written file left


def test_a_killed_worker_loses_nothing_running_or_waiting(stack, media, tmp_path):
    # Given two jobs running (concurrency 2) and one waiting in the worker's prefetch
    ids = [stack.submit("transcode", f"file://{media}/medium.mp4", **SLOW) for _ in range(3)]
    for job_id in ids[:2]:
        running(stack, job_id)
    # When the whole worker is SIGKILLed and a new one starts
    stack.kill_worker()
    left = [d for job_id in ids[:2] for d in Path(tempfile.gettempdir()).glob(f"sg-{job_id[:8]}-*")]
    assert left                                          # the killed jobs' temp dirs were left behind
    stack.start_worker()
    # Then all three end SUCCESS, each once, and the new worker removed what the dead one left
    for job_id in ids:
        assert_one_success_and_a_playable_output(stack, job_id, tmp_path)
    assert not [d for d in left if d.exists()]


def test_jobs_outlive_rabbitmqs_consumer_timeout_even_with_a_backlog(stack, media):
    only_rabbitmq(stack)
    # Given RabbitMQ's consumer_timeout lowered to 2 s (default 30 min), checked every 0.5 s, and a
    # worker with one process (-c 1) whose channels are made under it
    rabbitmq_env(consumer_timeout=2000, channel_tick_interval=500)
    log = stack.work_dir / "worker.log"
    try:
        stack.stop_worker()
        stack.start_worker(concurrency=1)
        worker = stack.worker
        assert worker is not None
        log_start = log.stat().st_size
        # When a job runs well past the timeout with three more queued behind it: the worker has
        # prefetched one of those, and that delivery stays unacknowledged while the long job runs
        long_job = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="medium")
        backlog = [stack.submit("probe", f"file://{media}/short.mp4") for _ in range(3)]
        final = stack.wait_status("transcode", long_job, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=240)
        assert final["status"] == "SUCCESS" and final["result"]["duration"] > 19, final
        for job_id in backlog:
            assert stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"}, timeout_s=120)["status"] == "SUCCESS"
        # Then RabbitMQ did close the channel over the waiting delivery, and the same worker process
        # reconnected by itself: every job ran once, nothing was lost
        text = log.read_bytes()[log_start:].decode(errors="replace")
        assert "PRECONDITION_FAILED" in text and "delivery acknowledgement" in text
        assert worker.poll() is None and stack.worker is worker
        for job_id in (long_job, *backlog):
            assert stack.request("GET", f"/jobs/{job_id}").json()["attempts"] == 1
            assert len([line for line in text.splitlines() if job_id in line and "job succeeded" in line]) == 1
        later = stack.submit("probe", f"file://{media}/short.mp4")
        assert stack.wait_status("probe", later, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    finally:
        rabbitmq_env(consumer_timeout=1800000, channel_tick_interval=60000)
        stack.stop_worker()
        stack.start_worker()


def test_broker_outage_gives_503_and_accepted_jobs_complete_after_it(stack, media):
    only_rabbitmq(stack)
    # Given jobs accepted while no worker runs (they wait in RabbitMQ)
    stack.stop_worker()
    accepted = [stack.submit("probe", f"file://{media}/short.mp4") for _ in range(3)]
    rabbitmq_app("stop_app")
    try:
        # When submits arrive during the outage: 503 + Retry-After, and no job recorded
        before = len(stack.request("GET", "/jobs", params={"limit": 200}).json()["jobs"])
        for _ in range(3):
            answer = stack.request("POST", "/probe/process", json={"doc_url": f"file://{media}/short.mp4"})
            assert (answer.status_code, answer.json()["code"]) == (503, 400), answer.text
            assert answer.headers["Retry-After"]
        assert len(stack.request("GET", "/jobs", params={"limit": 200}).json()["jobs"]) == before
        ready = stack.session.get(f"{stack.url}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"
    finally:
        rabbitmq_app("start_app")
    # Then, the broker back, a worker drains what was accepted before, and the gateway publishes again
    stack.start_worker()
    for job_id in accepted:
        assert stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    after = stack.submit("probe", f"file://{media}/short.mp4")
    assert stack.wait_status("probe", after, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    wait_for(lambda: stack.session.get(f"{stack.url}/ready", timeout=30).status_code == 200, 30, "/ready")


def test_a_running_worker_reconnects_after_a_broker_restart(stack, media):
    only_rabbitmq(stack)
    rabbitmq_app("stop_app")
    rabbitmq_app("start_app")
    job_id = stack.submit("probe", f"file://{media}/short.mp4")     # the same worker process, reconnected
    assert stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"}, timeout_s=120)["status"] == "SUCCESS"


def test_result_backend_outage_is_503_and_the_final_state_lands_when_it_returns(stack, media, tmp_path):
    only_rabbitmq(stack)
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", **SLOW)
    running(stack, job_id)
    redis_stop()
    try:
        answer = stack.request("GET", "/transcode/status", params={"uuid": job_id})
        assert (answer.status_code, answer.json()["code"]) == (503, 400) and answer.headers["Retry-After"]
        ready = stack.session.get(f"{stack.url}/ready", timeout=30).json()
        assert ready["checks"]["result_backend"] == "unreachable"
        # the job finishes while Redis is down: the worker holds its final state and retries
        wait_for(lambda: stack.worker_log_lines(job_id, "state write failed"), 120, "the worker to retry")
    finally:
        redis_start()
    assert_one_success_and_a_playable_output(stack, job_id, tmp_path)


def test_job_store_outage_is_503_and_the_job_finishes_once_when_it_returns(stack, media, tmp_path):
    only_rabbitmq(stack)
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", **SLOW)
    running(stack, job_id)
    postgres("stop")
    try:
        answer = stack.request("GET", "/transcode/status", params={"uuid": job_id})
        assert (answer.status_code, answer.json()["code"]) == (503, 400), answer.text
        wait_for(lambda: stack.worker_log_lines(job_id, "state write failed"), 120, "the worker to retry")
    finally:
        postgres("start")
    record = assert_one_success_and_a_playable_output(stack, job_id, tmp_path)
    assert record["attempts"] == 1                       # not mistaken for a lost worker


class FlakyMedia:
    """An HTTP media server on loopback: ``/flaky/<n>/<name>`` answers 503 n times, then the file."""

    def __init__(self, root: Path) -> None:
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                parts = self.path.strip("/").split("/")
                if parts[0] == "flaky":
                    count = outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                    if count <= int(parts[1]):
                        self.send_error(503, "busy")
                        return
                    self.path = "/" + "/".join(parts[2:])
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def flaky_media(media, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "short.mp4").write_bytes((media / "short.mp4").read_bytes())
    server = FlakyMedia(root)
    yield server, root
    server.server.shutdown()
    server.server.server_close()


def test_transient_faults_retry_with_backoff_and_permanent_ones_fail_at_once(stack, flaky_media):
    server, root = flaky_media
    tag = uuid.uuid4().hex[:6]
    # Two 503s, then the file: retried, SUCCESS on the third attempt
    job_id = stack.submit("probe", f"{server.url}/flaky/2/short.mp4?{tag}")
    seen: list[dict] = []
    final = stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"}, seen=seen)
    assert final["status"] == "SUCCESS", final
    record = stack.request("GET", f"/jobs/{job_id}").json()
    assert record["attempts"] == 3 and "HTTP 503" in record["note"]
    # A 404 is permanent: FAILURE 301 at once, one attempt
    missing = stack.submit("probe", f"{server.url}/later-{tag}.mp4")
    failed = stack.wait_status("probe", missing, {"SUCCESS", "FAILURE"})
    assert failed["result"]["code"] == 301 and "HTTP 404" in failed["result"]["message"]
    assert stack.request("GET", f"/jobs/{missing}").json()["attempts"] == 1
    # Past the retry limit (SG_MAX_RETRIES=3): FAILURE with the last fault's code
    hopeless = stack.submit("probe", f"{server.url}/flaky/9/short.mp4?{tag}")
    seen = []
    final = stack.wait_status("probe", hopeless, {"SUCCESS", "FAILURE"}, seen=seen)
    assert final["result"]["code"] == 301 and stack.request("GET", f"/jobs/{hopeless}").json()["attempts"] == 4
    # While it waited for its retries (backoffs of at least 0.1, 0.2 and 0.4 s), status said so
    retrying = [b for b in seen if b["status"] == "RETRY"]
    assert retrying and "HTTP 503" in str(retrying[-1]), [b["status"] for b in seen]

    # The failure list shows the failed job to an admin, who requeues it once the file exists
    admin = {"Authorization": f"Bearer {stack.token('ops', admin=True)}"}
    listed = stack.session.get(f"{stack.url}/admin/jobs/failed", headers=admin, timeout=30).json()["jobs"]
    assert missing in {j["uuid"] for j in listed}
    (root / f"later-{tag}.mp4").write_bytes((root / "short.mp4").read_bytes())
    done = subprocess.run([str(BIN / "sg"), "jobs", "requeue", missing, "--json"], env=stack.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert stack.wait_status("probe", missing, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    again = stack.session.post(f"{stack.url}/admin/jobs/{missing}/requeue", headers=admin, timeout=30)
    assert (again.status_code, again.json()["code"]) == (409, 215)


class DripMedia:
    """A media server on loopback that sends its answer a byte every 50 ms: no read ever times out."""

    def __init__(self) -> None:
        self.hits = 0
        self.open = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                with outer.lock:
                    outer.hits += 1
                    outer.open += 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**6))
                    self.end_headers()
                    for _ in range(10**6):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        if outer.stopped.wait(0.05):
                            return
                except OSError:           # the worker cut the connection: what the test expects
                    pass
                finally:
                    with outer.lock:
                        outer.open -= 1

            def log_message(self, *args):
                pass

        self.stopped = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_drip_fed_download_fails_with_301_after_its_retries_and_frees_the_worker(stack, media):
    if stack.name != "embedded":
        pytest.skip("one backend is enough: downloads do not depend on the broker")
    drip = DripMedia()
    # Given workers whose downloads may take 1 s in all (SG_DOWNLOAD_DEADLINE_S; per read: 30 s)
    stack.stop_worker()
    stack.env["SG_DOWNLOAD_DEADLINE_S"] = "1"
    try:
        stack.start_worker()
        # When a job's media server drip-feeds its bytes
        job_id = stack.submit("probe", f"{drip.url}/clip.mp4")
        final = stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=120)
        # Then each attempt is cut at the deadline, retried as a transient fault, and the job fails with 301
        assert final["status"] == "FAILURE" and final["result"]["code"] == 301, final
        assert "SG_DOWNLOAD_DEADLINE_S" in final["result"]["message"]
        record = stack.request("GET", f"/jobs/{job_id}").json()
        assert record["attempts"] == stack.settings.max_retries_for("probe") + 1 == drip.hits
        # and the worker is free again: no connection left open, and the next job runs
        wait_for(lambda: drip.open == 0, 30, "the worker to close its last drip-fed connection")
        later = stack.submit("probe", f"file://{media}/short.mp4")
        assert stack.wait_status("probe", later, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    finally:
        drip.close()
        stack.env.pop("SG_DOWNLOAD_DEADLINE_S", None)
        stack.stop_worker()
        stack.start_worker()


def orphan(stack, media, attempts: int) -> str:
    """A probe job the store says a vanished worker runs: STARTED, its lease expired, and no message
    for it anywhere (as when the node that held it died with its broker)."""
    from sqlalchemy import update

    from service_gateway.store import Job, utcnow
    job_id = str(uuid.uuid4())
    stack.store.add(uuid=job_id, owner="alice", service="probe", queue="probe", status="PENDING",
                    doc_url=f"file://{media}/short.mp4", params={}, misc={}, progress=0, cancel_requested=False)
    assert stack.store.mark_started(job_id, "gone-host", lease_owner="gone-host:1", lease_s=30)
    stack.store._run(update(Job).where(Job.uuid == job_id).values(
        attempts=attempts, lease_until=utcnow() - timedelta(seconds=5)))
    return job_id


def test_an_orphaned_job_is_requeued_by_the_real_sweeper_or_failed_past_its_retries(stack, media):
    # Given two jobs STARTED by a worker that vanished, with no message left: one on its first run,
    # one that has already been lost as often as the retry limit allows
    limit = stack.settings.max_retries_for("probe")
    rerun, hopeless = orphan(stack, media, attempts=1), orphan(stack, media, attempts=limit + 1)
    assert stack.status("probe", rerun)["status"] == "STARTED"
    # Then the running worker's sweeper requeues the first: it runs again and ends SUCCESS, once
    final = stack.wait_status("probe", rerun, {"SUCCESS", "FAILURE"}, timeout_s=60)
    assert final["status"] == "SUCCESS" and abs(final["result"]["duration"] - 4) < 0.2, final
    record = stack.request("GET", f"/jobs/{rerun}").json()
    assert record["attempts"] == 2 and "gone-host:1" in record["note"] and "stopped renewing" in record["note"]
    wait_for(lambda: stack.worker_log_lines(rerun, "job succeeded"), 10, "the success log line")
    assert len(stack.worker_log_lines(rerun, "job succeeded")) == 1
    # and fails the second with code 110, not run again
    failed = stack.wait_status("probe", hopeless, {"SUCCESS", "FAILURE"}, timeout_s=60)
    assert failed["status"] == "FAILURE" and failed["result"]["code"] == 110, failed
    assert stack.request("GET", f"/jobs/{hopeless}").json()["attempts"] == limit + 1
    assert not stack.worker_log_lines(hopeless, "running probe")


def test_idempotency_key_returns_the_same_job_even_to_racing_retries(stack, media):
    body = {"doc_url": f"file://{media}/short.mp4"}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    headers = {**stack.headers("idem"), **key}

    def post(_):
        return stack.session.post(f"{stack.url}/probe/process", json=body, headers=headers, timeout=30)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["uuid"] for a in answers}) == 1
    assert len(stack.request("GET", "/jobs", sub="idem", params={"limit": 50}).json()["jobs"]) == 1
    other = stack.session.post(f"{stack.url}/probe/process", json={**body, "misc": {"x": 1}}, headers=headers,
                               timeout=30)
    assert (other.status_code, other.json()["code"]) == (409, 214)
    # The key is the caller's: another caller with the same key gets its own job
    mine = stack.session.post(f"{stack.url}/probe/process", json=body, headers={**stack.headers("other"), **key},
                              timeout=30)
    assert mine.status_code == 202 and mine.json()["uuid"] != answers[0].json()["uuid"]


def test_sigterm_lets_the_worker_finish_its_job(stack, media, tmp_path):
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", **SLOW)
    running(stack, job_id)
    worker = stack.worker
    assert worker is not None
    worker.send_signal(signal.SIGTERM)                   # warm shutdown
    try:
        worker.wait(timeout=120)
        final = stack.status("transcode", job_id)
        assert final["status"] == "SUCCESS", final       # finished before the worker exited
        assert stack.request("GET", f"/jobs/{job_id}").json()["attempts"] == 1
    finally:
        stack.worker = None
        stack.start_worker()


def test_sigterm_to_gunicorn_drains_a_download_in_flight(stack, media, tmp_path):
    # Given a large output being downloaded
    job_id = stack.submit("probe", f"file://{media}/short.mp4")
    stack.wait_status("probe", job_id, {"SUCCESS"})
    big = stack.settings.output_dir / job_id / "big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(64 * 1024 * 1024))
    response = stack.session.get(f"{stack.url}/jobs/{job_id}/outputs/big.bin", headers=stack.headers(),
                                 stream=True, timeout=60)
    chunks = response.iter_content(1024 * 1024)
    first = next(chunks)
    # When gunicorn is told to stop while it is sent
    gateway = stack.gateway
    assert gateway is not None
    gateway.send_signal(signal.SIGTERM)
    try:
        rest = b"".join(chunks)
        # Then the download completes whole, and gunicorn exits cleanly
        assert len(first) + len(rest) == 64 * 1024 * 1024
        assert gateway.wait(timeout=60) == 0
    finally:
        response.close()
        stack.start_gateway()
