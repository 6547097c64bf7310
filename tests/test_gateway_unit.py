"""The gateway's HTTP contract through Flask's test client: errors, auth, validation, 503s."""
from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from service_gateway import create_app
from service_gateway.errors import CODES
from tests.conftest import JWT_SECRET

SHAPE = {"status", "code", "error", "description"}


def assert_error(response, status: int, code: int) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == SHAPE and body["status"] == status and body["code"] == code
    assert body["error"] == CODES[code][1] and body["description"]
    return body


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/no/such/route/here", 404, 201),
    ("PUT", "/health", 405, 205),
    ("GET", "/transcode/annotate", 405, 205),
])
def test_flask_errors_use_the_json_shape(client, method, path, status, code):
    assert_error(client.open(path, method=method), status, code)


def test_oversized_body_is_413(app, client, auth):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = client.post("/probe/process", data="x" * 5000, headers=auth.headers(),
                           content_type="application/json")
    assert_error(response, 413, 209)


def test_unexpected_error_is_500_in_the_shape_without_a_traceback(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")
    body = assert_error(client.get("/boom"), 500, 100)
    assert "secret" not in body["description"]


def test_bearer_and_bare_tokens_are_accepted(client, auth):
    assert client.get("/jobs", headers=auth.headers()).status_code == 200
    assert client.get("/jobs", headers=auth.headers(bare=True)).status_code == 200


def test_each_auth_failure_has_its_own_answer(client, auth):
    missing = assert_error(client.get("/jobs"), 401, 220)
    malformed = assert_error(client.get("/jobs", headers={"Authorization": "Bearer not-a-jwt"}), 401, 221)
    wrong_key = pyjwt.encode({"sub": "eve", "exp": time.time() + 60, "type": "access"}, "x" * 40, "HS256")
    signature = assert_error(client.get("/jobs", headers={"Authorization": f"Bearer {wrong_key}"}), 401, 221)
    expired = assert_error(client.get("/jobs", headers=auth.headers(expires_in_s=-10)), 401, 222)
    none_alg = pyjwt.encode({"sub": "eve", "exp": time.time() + 60, "type": "access"}, None, "none")
    assert_error(client.get("/jobs", headers={"Authorization": f"Bearer {none_alg}"}), 401, 221)
    descriptions = [missing["description"], malformed["description"], signature["description"],
                    expired["description"]]
    assert len(set(descriptions)) == 4
    assert "signature" in signature["description"] and "request a new token" in expired["description"]


def test_a_verified_token_is_remembered_only_by_its_app_and_only_until_it_expires(app, client, auth, tmp_path):
    from service_gateway.auth import VerifiedTokens
    headers = auth.headers(expires_in_s=2)
    assert client.get("/jobs", headers=headers).status_code == 200
    cache: VerifiedTokens = app.extensions["sg_verified_tokens"]
    token = headers["Authorization"].split()[1]
    assert cache.get(token)["sub"] == "alice"
    # Another app (another secret) in the same process verifies it afresh, and refuses it.
    other = create_app({"data_dir": str(tmp_path / "other"), "jwt_secret": "another-secret-" + "y" * 30,
                        "log_format": "text"})
    assert_error(other.test_client().get("/jobs", headers=headers), 401, 221)
    # Past its exp the entry is dropped: the token goes through the full check again.
    cache.put(token, {**cache.get(token), "exp": time.time() - 1})
    assert cache.get(token) is None
    small = VerifiedTokens(size=2)
    for name in "abc":
        small.put(name, {"sub": name, "exp": time.time() + 60})
    assert [small.get(n) is not None for n in "abc"] == [False, True, True]     # bounded, oldest out


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"params": {}}, 206, "doc_url"),
    ({"doc_url": "ftp://example.com/a.mp4"}, 207, "scheme"),
    ({"doc_url": "http://169.254.169.254/latest/meta-data"}, 207, "private"),
    ({"doc_url": "http://127.0.0.1/a.mp4"}, 207, "private"),
    ({"doc_url": "file:///etc/passwd"}, 207, "SG_FILE_ROOTS"),
    ({"doc_url": "https://example.com/a.mp4", "params": {"height": "tall"}}, 204, "height"),
    ({"doc_url": "https://example.com/a.mp4", "params": {"preset": "mp4-999p"}}, 204, "preset"),
    ({"doc_url": "https://example.com/a.mp4", "params": {"heigth": 360}}, 204, "heigth"),
    ({"doc_url": "https://example.com/a.mp4", "params": {"start": 5, "end": 2}}, 204, "end"),
    ({"doc_url": "https://example.com/a.mp4", "params": {"container": "wav", "audio_codec": "aac"}}, 204,
     "audio_codec"),
    ({"doc_url": "https://example.com/a.mp4", "extra": 1}, 204, "extra"),
    ({"doc_url": "https://example.com/a.mp4", "params": []}, 204, "params"),
])
def test_bad_submissions_are_refused_and_change_nothing(app, client, auth, body, code, field):
    response = client.post("/transcode/process", json=body, headers=auth.headers())
    error = assert_error(response, 400, code)
    assert field in error["description"]
    assert app.extensions["service_gateway"].store.list(owner="alice")[0] == []


def test_non_json_process_body_is_400(client, auth):
    response = client.post("/transcode/process", data="{not json", headers=auth.headers(),
                           content_type="application/json")
    assert_error(response, 400, 200)


def test_unreachable_broker_is_503_with_retry_after_and_leaves_no_job(tmp_path, auth):
    # Given a gateway whose RabbitMQ is not listening
    app = create_app({"data_dir": str(tmp_path), "jwt_secret": JWT_SECRET, "log_format": "text",
                      "broker_url": "amqp://guest:guest@127.0.0.1:1//", "publish_timeout_s": 1})
    client = app.test_client()
    # When a valid job is submitted
    response = client.post("/probe/process", json={"doc_url": "https://example.com/a.mp4"}, headers=auth.headers())
    # Then the answer is 503 with Retry-After, and the job store has no trace of it
    assert_error(response, 503, 400)
    assert response.headers["Retry-After"] == "5"
    assert app.extensions["service_gateway"].store.list(owner="alice")[0] == []
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.get_json()["checks"]["broker"] == "unreachable"


def test_a_succeeded_job_is_remembered_until_its_ttl_and_never_past_its_result_expiry():
    """SucceededJobs: the status of a SUCCESS job served from memory, within both bounds."""
    from datetime import datetime, timedelta, timezone

    from service_gateway.jobs import SucceededJobs
    from service_gateway.store import Job

    def job(uuid: str) -> Job:
        return Job(uuid=uuid, owner="alice", service="probe", queue="probe", status="SUCCESS", doc_url="x")

    now = datetime.now(timezone.utc)
    cache = SucceededJobs(size=2, ttl_s=30)
    cache.put(job("a"), {"status": "SUCCESS", "date_done": now.isoformat()}, result_expires_s=3600)
    remembered = cache.get("a")
    assert remembered is not None and remembered[0].uuid == "a" and remembered[1]["status"] == "SUCCESS"
    # A result about to expire, one with no completion time, or caching turned off: not remembered.
    cache.put(job("b"), {"status": "SUCCESS", "date_done": (now - timedelta(seconds=3599.5)).isoformat()}, 3600)
    cache.put(job("c"), {"status": "SUCCESS"}, 3600)
    SucceededJobs(ttl_s=0).put(job("d"), {"status": "SUCCESS", "date_done": now}, 3600)
    assert cache.get("b") is None and cache.get("c") is None
    # Bounded: the oldest entry goes first.
    cache.put(job("e"), {"status": "SUCCESS", "date_done": now}, 3600)
    cache.put(job("f"), {"status": "SUCCESS", "date_done": now}, 3600)
    assert cache.get("a") is None and cache.get("e") and cache.get("f")
    # An entry lives no longer than its result: here it would expire in 1.5 s, so it is kept < 1 s.
    short = SucceededJobs(ttl_s=30)
    short.put(job("g"), {"status": "SUCCESS", "date_done": (now - timedelta(seconds=8.5)).isoformat()}, 10)
    assert short._jobs["g"][0] - time.monotonic() < 1
