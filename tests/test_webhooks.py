"""Webhooks: a signed delivery per finished job, retried when the receiver fails, every attempt recorded."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading

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
