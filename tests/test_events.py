"""Server-Sent Events of a job's status, through gunicorn, on both backends."""
from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.e2e


def read_events(stack, job_id: str, last_id: str | None = None, sub: str = "alice",
                until=None) -> tuple[list[dict], bool]:
    """One connection: the events it carried, and whether it ended with the final result.

    ``until(event)``: the client hangs up as soon as it returns true (the server did not end the stream).
    """
    headers = stack.headers(sub)
    if last_id:
        headers["Last-Event-ID"] = last_id
    events, current = [], {}
    with requests.get(f"{stack.url}/jobs/{job_id}/events", headers=headers, stream=True, timeout=60) as answer:
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        for line in answer.iter_lines(decode_unicode=True):
            if line.startswith(("id:", "event:", "data:")):
                key, _, value = line.partition(":")
                current[key] = value.strip()
            elif line == "" and "data" in current:
                events.append({"id": current["id"], "event": current["event"], "body": json.loads(current["data"])})
                current = {}
                if until is not None and until(events[-1]):
                    break
    return events, bool(events) and events[-1]["event"] == "result"


def test_a_job_streams_rising_progress_then_its_result_across_reconnects(stack, media):
    # A slow VP9 encode runs for far longer than SG_SSE_MAX_S=4; it is cancelled once the streams were seen
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="slow")

    # The client hangs up after the first progress event, then resumes from it with Last-Event-ID
    first, done = read_events(stack, job_id, until=lambda e: e["body"]["status"] == "PROGRESS")
    assert not done and first[-1]["body"]["status"] == "PROGRESS", first
    resumed, done = read_events(stack, job_id, first[-1]["id"])
    assert not done, "the job should still run: the server ended the stream after SG_SSE_MAX_S"
    assert all(e["id"] != first[-1]["id"] for e in resumed)            # nothing the client saw is repeated
    seen = first + resumed

    assert stack.request("DELETE", f"/jobs/{job_id}").status_code == 202
    last_id, connections = seen[-1]["id"], 0
    while not done:
        assert connections < 30, "the stream never delivered the result"
        events, done = read_events(stack, job_id, last_id)
        connections += 1
        if events:
            assert events[0]["id"] != last_id
            last_id = events[-1]["id"]
            seen += events
    progress = [e["body"]["progress"] for e in seen if e["event"] != "result"]
    assert progress == sorted(progress) and progress[0] >= 0, progress
    final = seen[-1]["body"]
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109, final
    assert [e["event"] for e in seen].count("result") == 1


def test_a_finished_job_answers_its_result_at_once_and_other_callers_get_404(stack, media):
    job_id = stack.submit("probe", f"file://{media}/short.mp4")
    stack.wait_status("probe", job_id, {"SUCCESS"})
    events, done = read_events(stack, job_id)
    assert done and len(events) == 1 and events[0]["body"]["result"]["service"] == "probe"
    other = requests.get(f"{stack.url}/jobs/{job_id}/events", headers=stack.headers("mallory"), timeout=30)
    assert (other.status_code, other.json()["code"]) == (404, 203)
