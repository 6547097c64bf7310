"""End to end, on both backends: real gunicorn, real Celery worker, real ffmpeg on generated clips."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.stack import wait_for

pytestmark = pytest.mark.e2e


def ffprobe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_transcode_reports_rising_progress_and_serves_a_playable_output(stack, media, tmp_path):
    # Given a 20 s 720p clip, when it is transcoded to 360p through the seed route (form args)
    response = stack.request("POST", "/transcode/annotate",
                             data={"doc_url": f"file://{media}/medium.mp4", "preset": "mp4-360p", "speed": "medium",
                                   "note": "goes to misc"})
    assert response.status_code == 202, response.text
    job_id = response.json()["uuid"]
    assert response.headers["Location"].endswith(f"/transcode/status?uuid={job_id}")

    seen: list[dict] = []
    final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE"}, seen=seen)

    # Then progress rose in steps, never went back, and reached 100 only on SUCCESS
    assert final["status"] == "SUCCESS", final
    progress = [body["progress"] for body in seen]
    assert progress == sorted(progress)
    running = [b for b in seen if b["status"] == "PROGRESS"]
    assert len({b["progress"] for b in running}) >= 2, progress
    assert all(b["progress"] < 100 for b in seen if b["status"] != "SUCCESS")
    sample = running[0]["result"]
    assert set(sample) >= {"current", "total", "worker_id_version", "start_time", "host", "type"}
    assert sample["total"] == 100 and sample["type"] == "transcode"

    # And the output is listed, downloadable and really 360p of the same duration
    result = final["result"]
    assert final["progress"] == 100
    (output,) = result["outputs"]
    assert output["name"] == "transcoded.mp4" and output["content_type"] == "video/mp4"
    assert output["url"] == f"{stack.url}/jobs/{job_id}/outputs/transcoded.mp4"
    download = stack.request("GET", output["url"][len(stack.url):])
    assert download.status_code == 200
    assert len(download.content) == output["size"]
    path = tmp_path / "out.mp4"
    path.write_bytes(download.content)
    info = ffprobe(path)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["height"], video["width"]) == ("h264", 360, 640)
    assert abs(float(info["format"]["duration"]) - 20.0) < 0.2

    # And the durable record keeps parameters and misc
    record = stack.request("GET", f"/jobs/{job_id}").json()
    assert record["params"]["preset"] == "mp4-360p" and record["misc"] == {"note": "goes to misc"}
    assert record["finished_at"] and record["status"] == "SUCCESS"


def test_transcode_trims_to_explicit_parameters(stack, media):
    job_id = stack.submit("transcode", f"file://{media}/short.mp4", container="webm", height=120, start=1, end=3)
    final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    out = final["result"]["output"]
    assert abs(out["duration"] - 2.0) < 0.15
    codecs = {s["type"]: s["codec"] for s in out["streams"]}
    assert codecs == {"video": "vp9", "audio": "opus"}


def test_probe_over_http_reports_streams(stack, http_media):
    job_id = stack.submit("probe", f"{http_media}/short.mp4")
    final = stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    result = final["result"]
    assert abs(result["duration"] - 4.0) < 0.1
    streams = {s["type"]: s for s in result["streams"]}
    assert (streams["video"]["codec"], streams["video"]["width"], streams["video"]["height"]) == ("h264", 320, 240)
    assert streams["video"]["frame_rate"] == 25.0
    audio = streams["audio"]
    assert (audio["codec"], audio["sample_rate"], audio["channels"]) == ("aac", 44100, 2)


def test_storage_doc_id_is_resolved_through_the_template(stack):
    response = stack.request("POST", "/probe/annotate/short.mp4")
    assert response.status_code == 202, response.text
    final = stack.wait_status("probe", response.json()["uuid"], {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final


@pytest.mark.parametrize(("name", "code"), [("corrupt.mp4", 305), ("notes.txt", 305), ("missing.mp4", 301)])
def test_bad_documents_fail_with_a_code(stack, media, name, code):
    job_id = stack.submit("transcode", f"file://{media}/{name}", preset="mp4-360p")
    final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "FAILURE"
    assert final["result"]["code"] == code, final
    assert str(media) not in final["result"]["message"]    # no worker paths leak to clients


def ffmpeg_children(job_id: str) -> list[psutil.Process]:
    """The job's ffmpeg processes: they run in its private temp dir (sg-<uuid prefix>-...)."""
    found = []
    mark = f"sg-{job_id[:8]}"
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["name"] != "ffmpeg" or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if mark in proc.cwd() or any(mark in a for a in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_cancel_of_a_running_job_stops_it_and_its_ffmpeg(stack, media):
    # Given a slow encode that is running
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="slow")
    stack.wait_status("transcode", job_id, {"PROGRESS"})
    wait_for(lambda: ffmpeg_children(job_id), 10, "the job's ffmpeg to run")

    # When it is cancelled
    response = stack.request("POST", "/transcode/cancel", params={"uuid": job_id})
    assert response.status_code == 202, response.text

    # Then within 2 s it is REVOKED with code 109 and its ffmpeg is gone
    final = stack.wait_status("transcode", job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert final["status"] == "REVOKED"
    assert final["result"]["code"] == 109
    assert final["progress"] < 100
    wait_for(lambda: not ffmpeg_children(job_id), 1, "the job's ffmpeg to exit")
    assert stack.request("DELETE", f"/jobs/{job_id}").json()["code"] == 210   # finished: nothing to cancel


def test_cancel_while_no_worker_runs_holds_when_one_starts(stack, media):
    stack.stop_worker()
    try:
        job_id = stack.submit("probe", f"file://{media}/short.mp4")
        response = stack.request("DELETE", f"/jobs/{job_id}")
        assert response.status_code == 202
        assert response.json()["status"] == "REVOKED"
    finally:
        stack.start_worker()
    # A job sent after the cancelled one completes, so the worker has consumed the queue past it
    later = stack.submit("probe", f"file://{media}/short.mp4")
    assert stack.wait_status("probe", later, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    record = stack.request("GET", f"/jobs/{job_id}").json()
    assert record["status"] == "REVOKED" and record["started_at"] is None
    assert record["result"]["code"] == 109


def test_jobs_are_private_to_their_owner(stack, media):
    job_id = stack.submit("probe", f"file://{media}/short.mp4", sub="alice")
    stack.wait_status("probe", job_id, {"SUCCESS"})
    for method, path in [("GET", f"/probe/status?uuid={job_id}"), ("POST", f"/probe/cancel?uuid={job_id}"),
                         ("GET", f"/jobs/{job_id}"), ("DELETE", f"/jobs/{job_id}"),
                         ("GET", f"/jobs/{job_id}/outputs/x.mp4")]:
        response = stack.request(method, path, sub="mallory")
        assert (response.status_code, response.json()["code"]) == (404, 203), (method, path)
    assert stack.request("GET", f"/jobs/{job_id}", sub="root", admin=True).status_code == 200
    listed = stack.request("GET", "/jobs", sub="mallory").json()["jobs"]
    assert job_id not in {j["uuid"] for j in listed}


def test_job_list_filters_and_paginates(stack, media):
    owner = "lister"
    ids = [stack.submit("probe", f"file://{media}/short.mp4", sub=owner) for _ in range(3)]
    for job_id in ids:
        stack.wait_status("probe", job_id, {"SUCCESS"}, sub=owner)
    first = stack.request("GET", "/jobs", sub=owner, params={"limit": 2, "service": "probe"}).json()
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    second = stack.request("GET", "/jobs", sub=owner, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    listed = [j["uuid"] for j in first["jobs"] + second["jobs"]]
    assert listed == list(reversed(ids)) and second["next_cursor"] is None
    assert stack.request("GET", "/jobs", sub=owner, params={"status": "FAILURE"}).json()["jobs"] == []
    bad = stack.request("GET", "/jobs", sub=owner, params={"status": "DONE"})
    assert (bad.status_code, bad.json()["code"]) == (400, 204)


def test_expired_result_is_reported_as_expired_not_pending(stack, media):
    job_id = stack.submit("probe", f"file://{media}/short.mp4")
    assert stack.wait_status("probe", job_id, {"SUCCESS"})["status"] == "SUCCESS"
    from service_gateway.celery_app import make_celery
    make_celery(stack.settings, {"probe": "probe"}).backend.forget(job_id)     # what result expiry does
    # A gateway process may answer a SUCCESS status from memory for SG_STATUS_CACHE_S (1 s here).
    body = stack.wait_status("probe", job_id, {"EXPIRED"}, timeout_s=10)
    assert body["progress"] == 100


def test_unknown_and_missing_uuids(stack):
    unknown = stack.request("GET", "/probe/status", params={"uuid": "00000000-0000-4000-8000-000000000000"})
    assert (unknown.status_code, unknown.json()["code"]) == (404, 203)
    missing = stack.request("GET", "/probe/status")
    assert (missing.status_code, missing.json()["code"]) == (400, 206)
    service = stack.request("GET", "/nope/status", params={"uuid": "x"})
    assert (service.status_code, service.json()["code"]) == (404, 202)


def test_services_registry_lists_schemas_and_online_workers(stack):
    services = {s["name"]: s for s in stack.request("GET", "/services").json()["services"]}
    assert set(services) >= {"probe", "transcode"}
    transcode = services["transcode"]
    assert transcode["queue"] == "transcode" and transcode["workers_online"] >= 1
    assert "mp4-720p" in transcode["parameters"]["properties"]["preset"]["enum"]


def test_concurrent_submits_and_progress_writes_all_land(stack, media):
    # Given a transcode writing progress, when 24 probes are submitted at once from 8 threads
    busy = stack.submit("transcode", f"file://{media}/medium.mp4", preset="mp4-360p")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: stack.submit("probe", f"file://{media}/short.mp4", sub="burst"), range(24)))
    # Then every one is accepted and finishes, and the worker never hit a locked database
    for job_id in ids + [busy]:
        service = "transcode" if job_id == busy else "probe"
        assert stack.wait_status(service, job_id, {"SUCCESS", "FAILURE"}, sub="alice" if job_id == busy else "burst",
                                 timeout_s=180)["status"] == "SUCCESS"
    log = (stack.work_dir / "worker.log").read_text(errors="replace")
    assert "database is locked" not in log


def test_ready_checks_every_dependency(stack):
    body = stack.session.get(f"{stack.url}/ready", timeout=10).json()
    assert body == {"status": "ready", "checks": {"job_store": "ok", "result_backend": "ok", "broker": "ok"}}


def test_annotations_are_posted_to_storage_with_retries(stack, media, annotation_store):
    # Given a storage that fails the first POST, when a job names an ann_doc_id
    doc_id = f"flaky-{stack.name}"
    response = stack.request("POST", "/probe/annotate",
                             data={"doc_url": f"file://{media}/short.mp4", "ann_doc_id": doc_id})
    assert response.status_code == 202, response.text
    final = stack.wait_status("probe", response.json()["uuid"], {"SUCCESS", "FAILURE"})
    # Then the worker retried, and storage holds exactly the result the status shows
    assert final["status"] == "SUCCESS", final
    posts = annotation_store.received(doc_id)
    assert len(posts) == 2 and posts[-1] == final["result"]


def test_a_storage_that_keeps_failing_fails_the_job_with_302(stack, media, annotation_store):
    doc_id = f"fail-{stack.name}"
    job_id = stack.request("POST", "/probe/annotate",
                           data={"doc_url": f"file://{media}/short.mp4", "ann_doc_id": doc_id}).json()["uuid"]
    final = stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "FAILURE" and final["result"]["code"] == 302, final
    assert len(annotation_store.received(doc_id)) == 3          # the first try and SG_ANNOTATION_STORAGE_RETRIES=2


def test_status_is_storing_while_annotations_are_posted(stack, media, annotation_store):
    # Given a storage that holds its answer, when a job names an ann_doc_id
    doc_id = f"hold-{stack.name}"
    response = stack.request("POST", "/probe/annotate",
                             data={"doc_url": f"file://{media}/short.mp4", "ann_doc_id": doc_id})
    assert response.status_code == 202, response.text
    job_id = response.json()["uuid"]
    try:
        # Then while the worker's POST is in flight the job's status is STORING
        annotation_store.wait_received(doc_id, 60)
        body = stack.wait_status("probe", job_id, {"STORING", "SUCCESS", "FAILURE"}, timeout_s=15)
        assert body["status"] == "STORING" and body["progress"] < 100, body
    finally:
        annotation_store.release(doc_id)
    # And once storage answered, SUCCESS with the result it stored
    final = stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    assert annotation_store.received(doc_id) == [final["result"]]


def test_a_job_over_its_time_limit_fails_with_108_and_its_ffmpeg_stops(stack, media):
    # Given a worker whose transcode jobs may run 1 s (and are killed 30 s past that, the hard limit)
    limits = {"SG_TIME_LIMITS": "transcode=1", "SG_TIME_LIMIT_GRACES": "transcode=30"}
    from service_gateway.settings import load_settings
    settings = load_settings(environ={**stack.env, **limits})
    assert (settings.time_limit_for("transcode"), settings.hard_time_limit_for("transcode")) == (1, 31)
    assert (settings.time_limit_for("probe"), settings.hard_time_limit_for("probe")) == (0, 0)
    saved = {k: stack.env.get(k) for k in limits}
    stack.stop_worker()
    stack.env.update(limits)
    try:
        stack.start_worker()
        # When a slow encode of a 20 s 720p clip runs past it
        job_id = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="slow")
        final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=60)
        # Then the SDK stopped it at the soft limit: FAILURE 108, its ffmpeg gone, the worker alive
        assert final["status"] == "FAILURE" and final["result"]["code"] == 108, final
        assert "time limit of 1 s" in final["result"]["message"]
        wait_for(lambda: not ffmpeg_children(job_id), 5, "the job's ffmpeg to exit")
        assert stack.worker.poll() is None
        assert stack.request("GET", f"/jobs/{job_id}").json()["status"] == "FAILURE"
    finally:
        stack.stop_worker()
        for key, value in saved.items():
            if value is None:
                stack.env.pop(key, None)
            else:
                stack.env[key] = value
        stack.start_worker()
