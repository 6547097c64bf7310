"""Named pipelines: definitions (settings file and /admin/pipelines), then real runs on both backends."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.stack import Stack, wait_for
from tests.test_e2e_jobs import ffmpeg_children

INDEX = {"description": "a 360p copy, then shots, loudness and faces on it",
         "steps": [{"name": "small", "service": "transcode", "params": {"preset": "mp4-360p"}, "weight": 2},
                   {"parallel": [{"service": "transitions"}, {"service": "loudness", "input": "doc"},
                                 {"service": "faces", "params": {"sample_fps": 2}}]}]}


# -- definitions: the Flask app on the embedded default, no worker -----------------------------------
def test_admin_defines_lists_replaces_and_deletes_a_pipeline(client, auth):
    admin = auth.headers("root", admin=True)
    created = client.post("/admin/pipelines", json={"name": "index", **INDEX}, headers=admin)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["kind"], body["source"], body["name"]) == ("pipeline", "admin", "index")
    assert [s.get("name") or s["parallel"][0]["name"] for s in body["steps"]] == ["small", "transitions"]
    assert body["parameters"]["properties"].keys() == {"small", "transitions", "loudness", "faces"}

    services = client.get("/services", headers=auth.headers()).get_json()["services"]
    assert [s["name"] for s in services if s.get("kind") == "pipeline"] == ["index"]
    again = client.post("/admin/pipelines", json={"name": "index", **INDEX}, headers=admin)
    assert (again.status_code, again.get_json()["code"]) == (409, 216)

    shorter = client.put("/admin/pipelines/index", json={"steps": [{"service": "probe"}]}, headers=admin)
    assert shorter.status_code == 200 and shorter.get_json()["steps"] == [
        {"name": "probe", "service": "probe", "params": {}, "input": "auto", "weight": 1.0}]
    assert client.get("/admin/pipelines/index", headers=admin).get_json()["steps"][0]["service"] == "probe"
    assert client.delete("/admin/pipelines/index", headers=admin).status_code == 204
    for method in ("GET", "PUT", "DELETE"):
        gone = client.open("/admin/pipelines/index", method=method, json={"steps": [{"service": "probe"}]},
                           headers=admin)
        assert (gone.status_code, gone.get_json()["code"]) == (404, 217), method
    nobody = client.get("/admin/pipelines", headers=auth.headers())
    assert (nobody.status_code, nobody.get_json()["code"]) == (403, 223)


@pytest.mark.parametrize("steps, field, code", [
    ([{"service": "nope"}], "steps[0].service", 204),
    ([{"service": "probe"}, {"parallel": [{"service": "faces", "params": {"sample_fps": -1}}]}],
     "steps[1].parallel[0].params.sample_fps", 204),
    ([{"service": "probe"}, {"service": "probe"}], "steps[1].name", 204),
    ([{"service": "probe", "input": "later"}], "steps[0].input", 204),
    ([{"service": "probe", "colour": "red"}], "steps[0].colour", 204),
    ([{"parallel": []}], "steps[0]", 204),
    ([], "steps", 204),
])
def test_a_bad_definition_is_refused_naming_the_field_and_nothing_is_saved(client, auth, steps, field, code):
    admin = auth.headers("root", admin=True)
    answer = client.post("/admin/pipelines", json={"name": "bad", "steps": steps}, headers=admin)
    assert (answer.status_code, answer.get_json()["code"]) == (400, code)
    assert field in answer.get_json()["description"]
    assert client.get("/admin/pipelines", headers=admin).get_json()["pipelines"] == []


def test_a_pipeline_cannot_take_a_service_name_and_settings_pipelines_are_read_only(tmp_path, auth):
    from service_gateway import create_app
    from service_gateway.errors import SettingsError
    from tests.conftest import JWT_SECRET
    config = tmp_path / "settings.toml"
    config.write_text('[pipelines.quick]\ndescription = "probe only"\nsteps = [{service = "probe"}]\n')
    app = create_app({"data_dir": str(tmp_path / "var"), "jwt_secret": JWT_SECRET, "config": str(config)})
    client = app.test_client()
    admin = auth.headers("root", admin=True)
    listed = client.get("/admin/pipelines", headers=admin).get_json()["pipelines"]
    assert [(p["name"], p["source"]) for p in listed] == [("quick", "settings")]
    for method in ("PUT", "DELETE"):
        answer = client.open("/admin/pipelines/quick", method=method, json={"steps": [{"service": "probe"}]},
                             headers=admin)
        assert (answer.status_code, answer.get_json()["code"]) == (409, 218)
    taken = client.post("/admin/pipelines", json={"name": "probe", "steps": [{"service": "probe"}]}, headers=admin)
    assert taken.status_code == 400 and "is a service" in taken.get_json()["description"]

    config.write_text('[pipelines.broken]\nsteps = [{service = "probe", params = {colour = "red"}}]\n')
    with pytest.raises(SettingsError, match=r"\[pipelines.broken\]: steps\[0\].params"):
        create_app({"data_dir": str(tmp_path / "var2"), "jwt_secret": JWT_SECRET, "config": str(config)})


def test_submit_overrides_are_checked_against_the_steps_schemas(client, auth, tmp_path):
    admin = auth.headers("root", admin=True)
    assert client.post("/admin/pipelines", json={"name": "index", **INDEX}, headers=admin).status_code == 201
    bad = client.post("/index/process", json={"doc_url": "https://example.org/a.mp4",
                                              "params": {"small": {"preset": "vhs"}}}, headers=auth.headers())
    assert (bad.status_code, bad.get_json()["code"]) == (400, 204)
    assert "small.preset" in bad.get_json()["description"]
    unknown = client.post("/index/process", json={"doc_url": "https://example.org/a.mp4",
                                                  "params": {"tiny": {}}}, headers=auth.headers())
    assert unknown.status_code == 400 and "tiny" in unknown.get_json()["description"]
    listed = client.get("/jobs", headers=auth.headers()).get_json()["jobs"]
    assert listed == []                                              # nothing was recorded


# Publishing to the embedded broker maps kombu's SQLAlchemy transport models, which SQLAlchemy 2.1 warns about.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_a_step_that_just_succeeded_counts_as_done_not_as_zero(app, client, auth):
    """The worker writes SUCCESS to the backend just before the store: that window must not drop progress."""
    from service_gateway.pipelines import running_status
    admin = auth.headers("root", admin=True)
    assert client.post("/admin/pipelines", json={"name": "index", **INDEX}, headers=admin).status_code == 201
    answer = client.post("/index/process", json={"doc_url": "https://example.org/a.mp4"}, headers=auth.headers())
    assert answer.status_code == 202, answer.get_json()
    rt = app.extensions["service_gateway"]
    pipeline = rt.store.get(answer.get_json()["uuid"])
    [small] = rt.store.children(pipeline.uuid)
    assert rt.store.claim(small.uuid, "w", lease_owner="w:1") is not None
    running = {"status": "PROGRESS", "result": {"current": 50, "total": 100}}
    halfway = running_status(rt, pipeline, lambda _rt, _id: running)["progress"]
    done = running_status(rt, pipeline, lambda _rt, _id: {"status": "SUCCESS", "result": {}})
    assert halfway == 20 and done["progress"] == 40, (halfway, done)        # weight 2 of 5
    assert done["result"]["steps"][0]["status"] == "SUCCESS"


# -- runs: a real gateway and worker on both backends ---------------------------------------------------


def define(stack: Stack, name: str, definition: dict) -> None:
    answer = stack.request("POST", "/admin/pipelines", sub="root", admin=True, json={"name": name, **definition})
    assert answer.status_code in (201, 409), answer.text
    if answer.status_code == 409:
        assert stack.request("PUT", f"/admin/pipelines/{name}", sub="root", admin=True,
                             json=definition).status_code == 200


@pytest.mark.e2e
def test_a_pipeline_runs_its_stages_with_one_rising_progress_and_merges_the_results(stack: Stack, media):
    define(stack, "index", INDEX)
    job_id = stack.submit("index", f"file://{media}/short.mp4")
    seen: list[dict] = []
    final = stack.wait_status("index", job_id, {"SUCCESS", "FAILURE", "REVOKED"}, seen=seen, timeout_s=180)
    assert final["status"] == "SUCCESS", final
    progress = [b["progress"] for b in seen]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    running = [b["result"] for b in seen if b["status"] == "PROGRESS"]
    assert running and all(r["type"] == "index" and len(r["steps"]) == 4 for r in running)
    assert {r["step"] for r in running if r["step"]} & {"small", "transitions", "loudness", "faces"}

    result = final["result"]
    assert [s["name"] for s in result["steps"]] == ["small", "transitions", "loudness", "faces"]
    by_name = {s["name"]: s for s in result["steps"]}
    assert by_name["small"]["result"]["outputs"][0]["name"] == "transcoded.mp4"
    assert by_name["transitions"]["result"]["service"] == "transitions"
    assert by_name["loudness"]["result"]["summary"]["integrated_lufs"] is not None
    assert by_name["faces"]["result"]["service"] == "faces"
    assert result["outputs"][0]["step"] == "small" and result["outputs"][0]["url"].startswith("http")

    # The output of "small" fed transitions and faces; loudness read the document itself
    steps = {s["name"]: stack.request("GET", f"/jobs/{s['uuid']}").json() for s in result["steps"]}
    small_id = by_name["small"]["uuid"]
    assert steps["transitions"]["misc"]["input"] == {"job": small_id, "name": "transcoded.mp4"}
    assert steps["faces"]["misc"]["input"] == {"job": small_id, "name": "transcoded.mp4"}
    assert "input" not in steps["loudness"]["misc"]
    assert all(s["pipeline"] == job_id and s["status"] == "SUCCESS" for s in steps.values())
    download = stack.request("GET", result["outputs"][0]["url"].replace(stack.url, ""))
    assert download.status_code == 200
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=height", "-of", "json", "-"], input=download.content, capture_output=True)
    assert json.loads(probe.stdout)["streams"][0]["height"] == 360
    # The pipeline's own uuid serves its steps' outputs (what `sg submit <pipeline> --wait` downloads)
    through_pipeline = stack.request("GET", f"/jobs/{job_id}/outputs/transcoded.mp4")
    assert through_pipeline.status_code == 200 and through_pipeline.content == download.content
    assert stack.request("GET", f"/jobs/{job_id}/outputs/transcoded.mp4?step=small").status_code == 200
    wrong_step = stack.request("GET", f"/jobs/{job_id}/outputs/transcoded.mp4?step=faces")
    assert (wrong_step.status_code, wrong_step.json()["code"]) == (404, 208)

    # Another caller sees neither the pipeline nor its steps
    other = stack.request("GET", f"/jobs/{small_id}", sub="mallory")
    assert (other.status_code, other.json()["code"]) == (404, 203)


@pytest.mark.e2e
def test_cancel_stops_the_running_step_within_2_s_and_skips_the_rest(stack: Stack, media):
    define(stack, "slow", {"steps": [{"name": "encode", "service": "transcode",
                                      "params": {"preset": "webm-vp9", "speed": "slow"}},
                                     {"service": "probe"}]})
    job_id = stack.submit("slow", f"file://{media}/medium.mp4")
    body = stack.wait_status("slow", job_id, {"PROGRESS"})
    step_id = body["result"]["steps"][0]["uuid"]
    wait_for(lambda: ffmpeg_children(step_id), 20, "the step's ffmpeg to run")

    assert stack.request("POST", "/slow/cancel", params={"uuid": job_id}).status_code == 202
    final = stack.wait_status("slow", job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert (final["status"], final["result"]["code"]) == ("REVOKED", 109)
    step = stack.wait_status("transcode", step_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert (step["status"], step["result"]["code"]) == ("REVOKED", 109)
    wait_for(lambda: not ffmpeg_children(step_id), 2, "the step's ffmpeg to exit")
    listed = stack.request("GET", "/jobs", params={"service": "probe", "limit": 200}).json()["jobs"]
    assert not [j for j in listed if j.get("pipeline") == job_id]     # the second step never started


@pytest.mark.e2e
def test_a_failed_step_fails_the_pipeline_with_its_code(stack: Stack, media):
    define(stack, "check", {"steps": [{"service": "probe"}, {"service": "transcode"}]})
    job_id = stack.submit("check", f"file://{media}/notes.txt")
    final = stack.wait_status("check", job_id, {"SUCCESS", "FAILURE", "REVOKED"})
    assert final["status"] == "FAILURE" and final["result"]["code"] == 305, final
    assert final["result"]["message"].startswith("step 'probe' (probe): ")
    listed = stack.request("GET", "/jobs", params={"service": "transcode", "limit": 200}).json()["jobs"]
    assert not [j for j in listed if j.get("pipeline") == job_id]


@pytest.mark.e2e
def test_a_pipeline_whose_gateway_died_before_its_first_stage_is_started_by_the_sweeper(stack: Stack, media):
    """Accepted work is never lost: a pipeline recorded without steps (the gateway died right after the
    insert) is found by a worker's sweeper once a lease has passed, and runs to its end."""
    import uuid
    from datetime import timedelta

    from service_gateway.pipelines import parse
    from service_gateway.runtime import Runtime
    from service_gateway.store import utcnow
    spec = parse("orphan", {"steps": [{"service": "probe"}]}, Runtime(stack.settings).services)
    job_id = str(uuid.uuid4())
    stack.store.add(uuid=job_id, owner="alice", service="orphan", queue="pipelines", status="PENDING",
                 doc_url=f"file://{media}/short.mp4", params={}, misc={}, progress=0, cancel_requested=False,
                 pipeline=spec.snapshot(spec.validate({})), created_at=utcnow() - timedelta(seconds=60))
    define(stack, "orphan", {"steps": [{"service": "probe"}]})       # so that /orphan/status resolves
    final = stack.wait_status("orphan", job_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=30)
    assert final["status"] == "SUCCESS", final
    assert final["result"]["steps"][0]["result"]["duration"] == pytest.approx(4, abs=0.2)
