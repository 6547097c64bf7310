"""The shared annotation schema and its W3C Web Annotation form, through the status route."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

from jsonschema import Draft202012Validator

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result, to_web_annotations
from service_gateway.status import JobStatus

SERVICE = SimpleNamespace(name="faces", version="1.2.0")


def sample_result() -> dict:
    return annotation_result(SERVICE, "https://media.example/a.mp4", 12.3456, [
        annotation(4.0, 8.5, "face", confidence=0.91234567, track_id=1, bbox=[10.4, 20.6, 30, 40]),
        annotation(1.0, 1.0, "cut", frame=25, score=0.7),
    ], {"tracks": 1})


def test_results_are_sorted_rounded_and_valid_against_the_published_schema():
    result = sample_result()
    Draft202012Validator(RESULT_SCHEMA).validate(result)
    assert [a["start"] for a in result["annotations"]] == [1.0, 4.0]
    assert result["duration"] == 12.346 and result["annotations"][1]["confidence"] == 0.9123


def test_web_annotations_use_media_fragments_for_time_and_box():
    page = to_web_annotations(sample_result(), "http://gw/faces/status?uuid=u&format=webannotation")
    assert page["@context"] == "http://www.w3.org/ns/anno.jsonld" and page["type"] == "AnnotationPage"
    cut, face = page["items"]
    assert cut["target"]["selector"]["value"] == "t=1,1"
    assert face["target"]["selector"]["value"] == "t=4,8.5&xywh=10,21,30,40"
    assert face["target"]["source"] == "https://media.example/a.mp4"
    assert face["body"][0]["value"] == "face" and face["body"][1]["value"]["track_id"] == 1
    assert face["id"] == "http://gw/faces/status?uuid=u&format=webannotation#a1"


def _finished_job(app, owner: str, result: dict) -> str:
    rt = app.extensions["service_gateway"]
    job_id = str(uuid.uuid4())
    rt.store.add(uuid=job_id, owner=owner, service="faces", queue="faces", status="PENDING",
                 doc_url=result["doc_url"], params={}, misc={}, progress=0, cancel_requested=False)
    rt.store.mark_started(job_id, "w")
    rt.celery.backend.store_result(job_id, result, JobStatus.SUCCESS.value)
    rt.store.finish(job_id, JobStatus.SUCCESS, progress=100)
    return job_id


def test_status_route_renders_web_annotations_on_request(app, client, auth):
    job_id = _finished_job(app, "alice", sample_result())
    plain = client.get(f"/faces/status?uuid={job_id}", headers=auth.headers()).get_json()
    assert plain["status"] == "SUCCESS" and plain["result"]["annotations"][1]["label"] == "face"
    rendered = client.get(f"/faces/status?uuid={job_id}&format=webannotation", headers=auth.headers()).get_json()
    assert rendered["result"]["type"] == "AnnotationPage" and len(rendered["result"]["items"]) == 2
    record = client.get(f"/jobs/{job_id}?format=webannotation", headers=auth.headers()).get_json()
    assert record["result"]["type"] == "AnnotationPage" and record["service"] == "faces"
    bad = client.get(f"/faces/status?uuid={job_id}&format=xml", headers=auth.headers())
    assert (bad.status_code, bad.get_json()["code"]) == (400, 204)
