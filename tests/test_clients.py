"""Clients, tokens, scopes, quotas and usage, end to end on both backends (real gateway, worker, `sg`)."""
from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt as pyjwt
import pytest
import requests

from tests.stack import BIN

pytestmark = pytest.mark.e2e


def sg(stack, *args: str) -> dict:
    """Run the `sg` console script against the stack's settings and parse its --json output."""
    done = subprocess.run([str(BIN / "sg"), *args, "--json"], env=stack.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def new_client(stack, *scopes: str, quota: list[str] = ()) -> dict:
    args = ["clients", "add", f"team-{uuid.uuid4().hex[:6]}", "--scopes", ",".join(scopes)]
    for item in quota:
        args += ["--quota", item]
    creds = sg(stack, *args)
    assert creds["client_id"].startswith("c_") and creds["secret"]
    return creds


def token_for(stack, creds: dict, as_json: bool = False) -> str:
    body = {"client_id": creds["client_id"], "secret": creds["secret"]}
    response = (requests.post(f"{stack.url}/auth/access-token", json=body, timeout=30) if as_json
                else requests.post(f"{stack.url}/auth/access-token", data=body, timeout=30))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == stack.settings.jwt_expires_s
    return answer["access_token"]


def call(stack, method: str, path: str, token: str | None, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, stack.url + path, headers=headers, timeout=30, **kwargs)


def test_two_clients_work_side_by_side_within_their_scopes(stack, media):
    # Given two clients made with `sg clients add`, each exchanging its credentials for a token
    a = new_client(stack, "probe")
    b = new_client(stack, "probe", "transcode")
    token_a, token_b = token_for(stack, a), token_for(stack, b, as_json=True)

    # When A submits within its scope, and outside it
    doc = {"doc_url": f"file://{media}/short.mp4"}
    submitted = call(stack, "POST", "/probe/annotate", token_a, data=doc)
    assert submitted.status_code == 202, submitted.text
    job_a = submitted.json()["uuid"]
    refused = call(stack, "POST", "/transcode/annotate", token_a, data=doc)
    assert (refused.status_code, refused.json()["code"]) == (403, 223)
    assert "transcode" in refused.json()["description"]

    # Then B cannot see, cancel or download A's job: 404, as for an unknown id
    for method, path in [("GET", f"/probe/status?uuid={job_a}"), ("POST", f"/probe/cancel?uuid={job_a}"),
                         ("GET", f"/jobs/{job_a}"), ("DELETE", f"/jobs/{job_a}"),
                         ("GET", f"/jobs/{job_a}/outputs/transcoded.mp4")]:
        answer = call(stack, method, path, token_b)
        assert (answer.status_code, answer.json()["code"]) == (404, 203), (method, path)
    assert job_a not in {j["uuid"] for j in call(stack, "GET", "/jobs", token_b).json()["jobs"]}

    # And A's finished job shows in its usage, in JSON and in the CSV for billing
    final = stack.wait_status("probe", job_a, {"SUCCESS", "FAILURE"}, sub=a["client_id"])
    assert final["status"] == "SUCCESS"
    usage = call(stack, "GET", "/usage", token_a).json()
    (row,) = usage["usage"]
    assert (row["owner"], row["service"], row["jobs"], row["succeeded"]) == (a["client_id"], "probe", 1, 1)
    assert abs(row["media_seconds"] - 4.0) < 0.1 and row["cpu_seconds"] > 0 and row["wall_seconds"] > 0
    assert usage["totals"]["jobs"] == 1
    report = call(stack, "GET", "/usage", token_a, params={"format": "csv", "group": "month"})
    assert report.headers["Content-Type"].startswith("text/csv")
    (line,) = list(csv.DictReader(io.StringIO(report.text)))
    assert line["owner"] == a["client_id"] and line["jobs"] == "1" and len(line["period"]) == 7
    assert call(stack, "GET", "/usage", token_b).json()["usage"] == []
    assert call(stack, "GET", "/admin/usage", token_b).status_code == 403
    everyone = call(stack, "GET", "/admin/usage", stack.token("root", admin=True)).json()["usage"]
    assert a["client_id"] in {r["owner"] for r in everyone}


def test_usage_is_recorded_for_failed_and_cancelled_jobs_without_anyone_polling(stack, media):
    creds = new_client(stack, "transcode")
    token = token_for(stack, creds)
    call(stack, "POST", "/transcode/annotate", token, data={"doc_url": f"file://{media}/corrupt.mp4"})
    owner = creds["client_id"]

    def recorded() -> list[dict] | None:
        rows = call(stack, "GET", "/usage", token).json()["usage"]
        return rows if rows and rows[0]["jobs"] == 1 else None
    from tests.stack import wait_for
    (row,) = wait_for(recorded, 60, "the failed job's usage record")     # nobody asked for its status
    assert (row["owner"], row["jobs"], row["succeeded"]) == (owner, 1, 0)


def test_quotas_refuse_with_429_and_parallel_submits_never_overshoot(stack, media):
    # Given a client allowed 5 jobs a day, when 12 submits race in parallel
    creds = new_client(stack, "probe", quota=["max_jobs_per_day=5"])
    token = token_for(stack, creds)
    doc = {"doc_url": f"file://{media}/short.mp4"}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: call(stack, "POST", "/probe/annotate", token, data=doc), range(12)))
    # Then exactly 5 are accepted; the others get 429 saying which quota, the use and the limit
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429] * 7, codes
    refused = next(a for a in answers if a.status_code == 429)
    body = refused.json()
    assert body["code"] == 401 and "max_jobs_per_day" in body["description"] and "limit 5" in body["description"]
    assert int(refused.headers["Retry-After"]) > 0
    listed = call(stack, "GET", "/jobs", token, params={"limit": 50}).json()["jobs"]
    assert len(listed) == 5                                     # nothing was recorded for the refused ones


def test_in_flight_quota_per_service_counts_running_jobs(stack, media):
    creds = new_client(stack, "transcode", "probe", quota=["transcode.max_in_flight=1"])
    token = token_for(stack, creds)
    slow = {"doc_url": f"file://{media}/medium.mp4", "preset": "webm-vp9", "speed": "slow"}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: call(stack, "POST", "/transcode/annotate", token, data=slow), range(6)))
    accepted = [a for a in answers if a.status_code == 202]
    assert len(accepted) == 1 and sorted(a.status_code for a in answers) == [202] + [429] * 5
    assert "max_in_flight for transcode" in next(a for a in answers if a.status_code == 429).json()["description"]
    # Another service is not limited by the transcode quota
    assert call(stack, "POST", "/probe/annotate", token, data={"doc_url": slow["doc_url"]}).status_code == 202
    # Once the running job is cancelled, a slot is free again
    job_id = accepted[0].json()["uuid"]
    assert call(stack, "DELETE", f"/jobs/{job_id}", token).status_code == 202
    stack.wait_status("transcode", job_id, {"REVOKED"}, sub=creds["client_id"])
    again = call(stack, "POST", "/transcode/annotate", token, data=slow)
    assert again.status_code == 202, again.text
    call(stack, "DELETE", f"/jobs/{again.json()['uuid']}", token)


def test_every_bad_token_is_401_and_revocation_is_immediate(stack):
    creds = new_client(stack, "probe")
    token = token_for(stack, creds)
    assert call(stack, "GET", "/jobs", token).status_code == 200
    secret = stack.settings.secret
    now = int(time.time())
    claims = {"sub": creds["client_id"], "iat": now, "nbf": now, "exp": now + 60, "type": "access",
              "iss": stack.settings.jwt_issuer, "aud": stack.settings.jwt_audience}
    bad = {
        "none": None,
        "malformed": "not.a.jwt",
        "alg none": pyjwt.encode(claims, None, algorithm="none"),
        "wrong key": pyjwt.encode(claims, "k" * 40, algorithm="HS256"),
        "wrong audience": pyjwt.encode({**claims, "aud": "another-api"}, secret, algorithm="HS256"),
        "wrong issuer": pyjwt.encode({**claims, "iss": "someone-else"}, secret, algorithm="HS256"),
        "no audience": pyjwt.encode({k: v for k, v in claims.items() if k != "aud"}, secret, algorithm="HS256"),
        "expired": pyjwt.encode({**claims, "iat": now - 120, "nbf": now - 120, "exp": now - 60}, secret,
                                algorithm="HS256"),
    }
    descriptions = {}
    for name, value in bad.items():
        answer = call(stack, "GET", "/jobs", value)
        assert answer.status_code == 401, (name, answer.text)
        descriptions[name] = answer.json()["description"]
    assert "request a new token" in descriptions["expired"]
    assert "audience" in descriptions["wrong audience"] and "issuer" in descriptions["wrong issuer"]

    # Rotating the secret kills the old token at once; the new secret works, the old one not
    rotated = sg(stack, "clients", "rotate-secret", creds["client_id"])
    answer = call(stack, "GET", "/jobs", token)
    assert (answer.status_code, answer.json()["code"]) == (401, 224)
    old = requests.post(f"{stack.url}/auth/access-token", data=creds, timeout=30)
    assert (old.status_code, old.json()["code"]) == (401, 225)
    fresh = token_for(stack, {"client_id": creds["client_id"], "secret": rotated["secret"]})
    assert call(stack, "GET", "/jobs", fresh).status_code == 200

    # Disabling through the admin route kills it too, and no new token is issued
    admin = stack.token("root", admin=True)
    disable = call(stack, "PATCH", f"/admin/clients/{creds['client_id']}", admin, json={"enabled": False})
    assert disable.status_code == 200
    assert call(stack, "GET", "/jobs", fresh).json()["code"] == 224
    disabled = requests.post(f"{stack.url}/auth/access-token",
                             data={"client_id": creds["client_id"], "secret": rotated["secret"]}, timeout=30)
    assert disabled.status_code == 401


def test_brute_force_is_slowed_logged_and_unknown_ids_take_as_long_as_wrong_secrets(stack):
    creds = new_client(stack, "probe")

    def attempt(client_id: str) -> tuple[requests.Response, float]:
        started = time.perf_counter()
        answer = requests.post(f"{stack.url}/auth/access-token", data={"client_id": client_id, "secret": "guess"},
                               timeout=30)
        return answer, time.perf_counter() - started

    # Unknown ids and a wrong secret get the same answer, in comparable time (Argon2 runs for both)
    unknown = [attempt(f"c_{uuid.uuid4().hex[:16]}") for _ in range(4)]
    wrong = [attempt(creds["client_id"]) for _ in range(4)]
    descriptions = {a.json()["description"] for a, _ in unknown + wrong}
    assert descriptions == {"client_id and secret do not match an enabled client"}
    assert {a.status_code for a, _ in unknown + wrong} == {401}
    ratio = statistics.median(t for _, t in unknown) / statistics.median(t for _, t in wrong)
    assert 0.5 < ratio < 2.0, ratio

    # The fifth failure locks the id out: 429 with Retry-After, even with the right secret
    locked, _ = attempt(creds["client_id"])
    assert locked.status_code == 401
    answer = requests.post(f"{stack.url}/auth/access-token", data=creds, timeout=30)
    assert (answer.status_code, answer.json()["code"]) == (429, 402)
    assert int(answer.headers["Retry-After"]) >= 1
    log = (stack.work_dir / "gateway.log").read_text(errors="replace")
    assert f"failed login: client_id={creds['client_id']}" in log and "locked out" in log
    assert creds["secret"] not in log


def test_admin_routes_manage_clients_and_non_admins_are_refused(stack):
    admin = stack.token("root", admin=True)
    made = call(stack, "POST", "/admin/clients", admin, json={"name": f"web-{uuid.uuid4().hex[:6]}",
                                                               "scopes": ["faces"], "quotas": {"max_in_flight": 2}})
    assert made.status_code == 201, made.text
    client = made.json()
    assert client["secret"] and client["quotas"] == {"max_in_flight": 2}
    listed = call(stack, "GET", "/admin/clients", admin).json()["clients"]
    assert client["client_id"] in {c["client_id"] for c in listed} and all("secret" not in c for c in listed)
    bad = call(stack, "PATCH", f"/admin/clients/{client['client_id']}", admin, json={"scopes": ["nope"]})
    assert (bad.status_code, bad.json()["code"]) == (400, 204)
    token = token_for(stack, client)
    assert call(stack, "GET", "/admin/clients", token).status_code == 403
    rotated = call(stack, "POST", f"/admin/clients/{client['client_id']}/rotate-secret", admin).json()
    assert rotated["secret"] != client["secret"]
    assert call(stack, "GET", "/jobs", token).json()["code"] == 224
