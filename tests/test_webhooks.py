"""Webhooks: a signed delivery per finished job, retried when the receiver fails, every attempt recorded."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import re
import threading
from pathlib import Path

import pytest

from tests.conftest import JWT_SECRET
from tests.stack import wait_for

pytestmark = pytest.mark.e2e


class Receiver:
    """A webhook receiver on loopback: answers 500 to the first POST of each path, 204 after."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    first = not any(r["path"] == self.path for r in outer.received)
                    outer.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(500 if first and "flaky" in self.path else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]


@pytest.fixture(scope="module")
def receiver():
    running = Receiver()
    yield running
    running.server.shutdown()
    running.server.server_close()


def verify(secret: str, post: dict) -> dict:
    timestamp, signature = post["headers"]["X-SG-Timestamp"], post["headers"]["X-SG-Signature"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + post["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, f"v1={expected}")
    return json.loads(post["body"])


def as_sent(stack, status: dict) -> dict:
    """A status as a webhook carries it: output URLs stay paths (the test stack sets no SG_PUBLIC_URL)."""
    return json.loads(json.dumps(status).replace(f'"{stack.url}/jobs/', '"/jobs/'))


def documented_verify():
    """The verify_webhook function of docs/webhooks.md, exactly as a reader copies it."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def verify_webhook" in b]
    assert len(blocks) == 1, "docs/webhooks.md must show verify_webhook in one python block"
    namespace: dict = {}
    exec(compile(blocks[0], "docs/webhooks.md", "exec"), namespace)   # noqa: S102 - our own doc
    return namespace["verify_webhook"]


def test_a_signed_delivery_per_job_retried_after_a_500(stack, media, receiver):
    secret = stack.request("GET", "/auth/webhook-secret", sub="hooked").json()["webhook_secret"]
    path = f"/flaky/{stack.name}"
    response = stack.request("POST", "/probe/annotate", sub="hooked",
                             data={"doc_url": f"file://{media}/short.mp4", "callback_url": receiver.url + path})
    job_id = response.json()["uuid"]
    final = stack.wait_status("probe", job_id, {"SUCCESS"}, sub="hooked")
    posts = wait_for(lambda: len(receiver.posts(path)) >= 2 and receiver.posts(path), 60, "the retried delivery")
    assert len(posts) == 2                                        # one failure (500), then delivered once
    for post in posts:
        body = verify(secret, post)
        assert body == final and post["headers"]["X-SG-Job"] == job_id
    assert [p["headers"]["X-SG-Delivery-Attempt"] for p in posts] == ["1", "2"]
    record = wait_for(lambda: (d := stack.request("GET", f"/jobs/{job_id}/deliveries", sub="hooked").json())
                      ["deliveries"][1:] and d, 30, "both attempts recorded")
    assert [(d["status_code"], d["ok"]) for d in record["deliveries"]] == [(500, False), (204, True)]
    other = stack.request("GET", f"/jobs/{job_id}/deliveries", sub="mallory")
    assert other.status_code == 404
    # A wrong secret would not verify: the signature covers timestamp and body
    with pytest.raises(AssertionError):
        verify("whsec_wrong", posts[0])


def test_failed_and_cancelled_jobs_are_delivered_too(stack, media, receiver):
    path = f"/plain/{stack.name}"
    stack.stop_worker()
    try:
        queued = stack.request("POST", "/probe/annotate", sub="hooked2",
                               data={"doc_url": f"file://{media}/short.mp4",
                                     "callback_url": receiver.url + path}).json()["uuid"]
        assert stack.request("DELETE", f"/jobs/{queued}", sub="hooked2").json()["status"] == "REVOKED"
    finally:
        stack.start_worker()
    failed = stack.request("POST", "/transcode/annotate", sub="hooked2",
                           data={"doc_url": f"file://{media}/notes.txt",
                                 "callback_url": receiver.url + path}).json()["uuid"]
    posts = wait_for(lambda: len(receiver.posts(path)) >= 2 and receiver.posts(path), 60, "two deliveries")
    statuses = {json.loads(p["body"])["uuid"]: json.loads(p["body"])["status"] for p in posts}
    assert statuses == {queued: "REVOKED", failed: "FAILURE"}


def test_callback_urls_follow_the_url_safety_rules(tmp_path, auth):
    from service_gateway import create_app
    client = create_app({"data_dir": str(tmp_path), "jwt_secret": JWT_SECRET, "log_format": "text"}).test_client()
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:9/x", "ftp://example.com/x", "file:///etc/x"):
        answer = client.post("/probe/process", json={"doc_url": "https://example.com/a.mp4", "callback_url": url},
                             headers=auth.headers())
        assert (answer.status_code, answer.get_json()["code"]) == (400, 204), url
        assert "callback_url" in answer.get_json()["description"]


def test_a_pipeline_gets_one_delivery_when_it_ends_and_its_steps_none(stack, media, receiver):
    from tests.test_pipelines import define
    define(stack, "hooked", {"steps": [{"service": "probe"}, {"service": "thumbnails", "input": "doc",
                                                             "params": {"count": 1}}]})
    secret = stack.request("GET", "/auth/webhook-secret", sub="hooked").json()["webhook_secret"]
    path = f"/pipeline/{stack.name}"
    response = stack.request("POST", "/hooked/process", sub="hooked", json={
        "doc_url": f"file://{media}/short.mp4", "callback_url": receiver.url + path})
    job_id = response.json()["uuid"]
    final = stack.wait_status("hooked", job_id, {"SUCCESS", "FAILURE"}, sub="hooked")
    assert final["status"] == "SUCCESS", final
    posts = wait_for(lambda: receiver.posts(path), 60, "the pipeline's delivery")
    body = verify(secret, posts[0])
    # (output URLs are absolute only with SG_PUBLIC_URL, which the test stack leaves unset)
    assert (body["uuid"], body["status"]) == (job_id, "SUCCESS") and body["result"]["steps"] == final["result"]["steps"]
    assert [s["name"] for s in body["result"]["steps"]] == ["probe", "thumbnails"]
    steps = [s["uuid"] for s in final["result"]["steps"]]
    assert all(not stack.request("GET", f"/jobs/{s}/deliveries", sub="hooked").json()["deliveries"] for s in steps)
    assert len(receiver.posts(path)) == 1


def test_progress_callbacks_rise_then_one_final_delivery_and_none_without_the_opt_in(stack, media, receiver):
    secret = stack.request("GET", "/auth/webhook-secret", sub="hooked").json()["webhook_secret"]
    opted, plain = f"/progress/{stack.name}", f"/no-progress/{stack.name}"
    # 20 s of 720p at the "medium" encoder speed: seconds of work, so several progress deliveries
    # at the test stack's SG_WEBHOOK_PROGRESS_INTERVAL_S of 0.5 s.
    job_id = stack.request("POST", "/transcode/annotate", sub="hooked", data={
        "doc_url": f"file://{media}/medium.mp4", "preset": "mp4-720p", "speed": "medium",
        "callback_url": receiver.url + opted, "callback_progress": "true"}).json()["uuid"]
    other = stack.request("POST", "/transcode/process", sub="hooked", json={
        "doc_url": f"file://{media}/medium.mp4", "params": {"preset": "mp4-360p", "speed": "ultrafast"},
        "callback_url": receiver.url + plain, "callback_progress": False}).json()["uuid"]
    final = stack.wait_status("transcode", job_id, {"SUCCESS", "FAILURE"}, sub="hooked", timeout_s=180)
    assert final["status"] == "SUCCESS", final
    bodies = wait_for(lambda: (b := [verify(secret, p) for p in receiver.posts(opted)])
                      and "event" not in b[-1] and b, 60, "the final delivery")
    progress = [b for b in bodies if b.get("event") == "progress"]
    values = [b["progress"] for b in progress]
    assert len(values) >= 3, values
    assert values == sorted(set(values)) and 0 < values[0] and values[-1] < 100, values   # rising, below 100
    assert all(b == {"event": "progress", "uuid": job_id, "status": "PROGRESS", "progress": b["progress"]}
               for b in progress)
    assert bodies[len(progress):] == [as_sent(stack, final)]     # exactly one final delivery, the last one
    assert all(p["headers"]["X-SG-Job"] == job_id for p in receiver.posts(opted))
    # The verification snippet of docs/webhooks.md accepts these real deliveries, and only those
    from service_gateway.webhooks import sign
    verify_webhook = documented_verify()
    assert [verify_webhook(p["headers"], p["body"], secret) for p in receiver.posts(opted)] == bodies
    last = receiver.posts(opted)[-1]
    for headers, body, key in ((last["headers"], last["body"].replace(b"SUCCESS", b"FAILURE"), secret),
                               (last["headers"], last["body"], "whsec_wrong"),
                               ({**last["headers"], "X-SG-Timestamp": "1700000000",     # well signed, but stale
                                 "X-SG-Signature": sign(secret, 1700000000, last["body"])}, last["body"], secret),
                               ({k: v for k, v in last["headers"].items() if k != "X-SG-Signature"}, last["body"],
                                secret)):
        with pytest.raises(ValueError):
            verify_webhook(headers, body, key)
    record = stack.request("GET", f"/jobs/{job_id}/deliveries", sub="hooked").json()["deliveries"]
    assert [(d["attempt"], d["ok"]) for d in record] == [(1, True)]    # progress deliveries are not recorded

    # The Python client asks for them with submit(..., callback_progress=True): refused here without a callback_url
    from service_gateway.client import BadRequest, Client
    from tests.test_client import new_client
    with Client(stack.url, *new_client(stack)) as api, pytest.raises(BadRequest) as refused:
        api.submit("probe", f"file://{media}/short.mp4", callback_progress=True)
    assert refused.value.code == 204 and "callback_url" in str(refused.value)

    other_final = stack.wait_status("transcode", other, {"SUCCESS", "FAILURE"}, sub="hooked", timeout_s=120)
    assert other_final["status"] == "SUCCESS", other_final
    posts = wait_for(lambda: receiver.posts(plain), 60, "the job's final delivery")
    assert [verify(secret, p) for p in posts] == [as_sent(stack, other_final)]   # no opt-in: the final status only


def test_callback_progress_needs_a_callback_url_and_a_service(tmp_path, auth):
    from service_gateway import create_app
    config = tmp_path / "settings.toml"
    config.write_text('[pipelines.twice]\nsteps = [{service = "probe"}, {name = "again", service = "probe"}]\n')
    client = create_app({"data_dir": str(tmp_path / "var"), "jwt_secret": JWT_SECRET, "log_format": "text",
                         "config": str(config)}).test_client()
    doc, hook = "https://example.com/a.mp4", "https://example.com/hook"
    cases = [("/probe/process", {"doc_url": doc, "callback_progress": True}, "callback_url"),
             ("/probe/process", {"doc_url": doc, "callback_url": hook, "callback_progress": "yes"}, "true or false"),
             ("/twice/process", {"doc_url": doc, "callback_url": hook, "callback_progress": True}, "events")]
    for path, body, says in cases:
        answer = client.post(path, json=body, headers=auth.headers())
        assert (answer.status_code, answer.get_json()["code"]) == (400, 204), body
        assert says in answer.get_json()["description"], answer.get_json()
    answer = client.post("/probe/annotate", data={"doc_url": doc, "callback_url": hook, "callback_progress": "maybe"},
                         headers=auth.headers())
    assert (answer.status_code, answer.get_json()["code"]) == (400, 204)
    assert "callback_progress" in answer.get_json()["description"]


def test_a_final_delivery_waits_for_the_progress_post_in_flight_and_no_progress_follows_it():
    from types import SimpleNamespace

    from service_gateway.webhooks import ProgressCallbacks
    sent, started, release = [], threading.Event(), threading.Event()

    def post(job_id, url, body, secret):             # a slow receiver, released by the test
        sent.append((job_id, body["progress"], secret))
        started.set()
        assert release.wait(30)
        return True
    callbacks = ProgressCallbacks(SimpleNamespace(webhook_progress_interval_s=3600), lambda owner: f"s-{owner}", post)
    callbacks.open("job", "https://example.com/hook", "alice")
    callbacks.update("job", 10)
    assert started.wait(30)                          # the first value goes at once
    callbacks.update("job", 30)                      # the next one waits for its turn (an hour away)...
    callbacks.update("job", 20)                      # (never lower than what is waiting)
    callbacks.close("job")                           # ...and the job ends first: it is dropped
    finals: list = []
    callbacks.then("job", lambda: finals.append(list(sent)))
    callbacks.then("other", lambda: finals.append("other at once"))
    assert finals == ["other at once"]               # this job's POST is in flight: its final waits
    release.set()
    wait_for(lambda: len(finals) == 2, 30, "the final delivery queued")
    assert finals[1] == [("job", 10, "s-alice")]     # queued after the one progress delivery, nothing since
