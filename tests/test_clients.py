"""Clients, tokens, scopes, quotas and usage, end to end on both backends (real gateway, worker, `sg`)."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt as pyjwt
import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.stack import BIN, wait_for

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


def test_brute_force_is_slowed_logged_and_unknown_ids_get_the_same_answer(stack):
    creds = new_client(stack, "probe")

    def attempt(client_id: str) -> requests.Response:
        return requests.post(f"{stack.url}/auth/access-token", data={"client_id": client_id, "secret": "guess"},
                             timeout=30)

    # Unknown ids and a wrong secret get the same answer (and the same Argon2 work: see the test below)
    unknown = [attempt(f"c_{uuid.uuid4().hex[:16]}") for _ in range(4)]
    wrong = [attempt(creds["client_id"]) for _ in range(4)]
    assert {(a.status_code, a.json()["code"], a.json()["description"]) for a in unknown + wrong} == {
        (401, 225, "client_id and secret do not match an enabled client")}

    # The fifth failure locks the id out: 429 with Retry-After, even with the right secret
    locked = attempt(creds["client_id"])
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


def test_unknown_ids_and_disabled_clients_cost_one_full_argon2_verify_like_a_wrong_secret(app, monkeypatch):
    """No timing: each login runs exactly one Argon2 verify, against a hash of the same cost."""
    import argon2

    from service_gateway import clients as clients_module
    rt = app.extensions["service_gateway"]
    made = rt.clients.add(f"timing-{uuid.uuid4().hex[:6]}", ["probe"])
    disabled = rt.clients.add(f"off-{uuid.uuid4().hex[:6]}", ["probe"])
    rt.clients.update(disabled.client.client_id, enabled=False)
    real, verified = clients_module.hasher(), []

    class Spy:
        def hash(self, secret: str) -> str:
            return real.hash(secret)

        def verify(self, hashed: str, secret: str) -> bool:
            verified.append(hashed)
            return real.verify(hashed, secret)
    monkeypatch.setattr(clients_module, "hasher", Spy)
    web = app.test_client()

    def login(client_id: str, secret: str) -> tuple[int, dict, list[str]]:
        verified.clear()
        answer = web.post("/auth/access-token", data={"client_id": client_id, "secret": secret})
        return answer.status_code, answer.get_json(), list(verified)

    unknown = login("c_" + uuid.uuid4().hex[:16], "guess")
    wrong = login(made.client.client_id, "guess")
    off = login(disabled.client.client_id, disabled.secret)     # the right secret of a disabled client
    right = login(made.client.client_id, made.secret)
    assert unknown[0] == wrong[0] == off[0] == 401 and unknown[1] == wrong[1] == off[1]
    assert right[0] == 200
    # One verify each: the unknown id against the dummy hash, the others against their own
    assert unknown[2] == [clients_module._DUMMY_HASH] and wrong[2] == right[2] == [made.client.secret_hash]
    assert off[2] == [disabled.client.secret_hash]
    # ... and the dummy hash costs what a real one does (same Argon2id memory, time and parallelism)
    assert argon2.extract_parameters(unknown[2][0]) == argon2.extract_parameters(made.client.secret_hash)


class _From(HTTPAdapter):
    """Connect from another loopback address (the gateway sees it as the caller's address)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def login_from(stack, address: str, creds: dict, secret: str | None = None) -> requests.Response:
    with requests.Session() as session:
        session.mount("http://", _From(address))
        return session.post(f"{stack.url}/auth/access-token", timeout=30,
                            data={"client_id": creds["client_id"], "secret": secret or creds["secret"]})


def test_failed_logins_lock_out_their_address_and_only_a_flood_locks_the_client(stack):
    from service_gateway.clients import THROTTLE_CLIENT_FAILURES, THROTTLE_FAILURES
    creds = new_client(stack, "probe")
    # Someone at 127.0.0.2 guesses: that address is locked out of the client, even with the right secret
    for _ in range(THROTTLE_FAILURES):
        assert login_from(stack, "127.0.0.2", creds, "guess").status_code == 401
    locked = login_from(stack, "127.0.0.2", creds)
    assert (locked.status_code, locked.json()["code"]) == (429, 402) and int(locked.headers["Retry-After"]) >= 1
    # ... while the client itself, elsewhere, still logs in
    assert login_from(stack, "127.0.0.1", creds).status_code == 200
    log = (stack.work_dir / "gateway.log").read_text(errors="replace")
    assert f"client_id={creds['client_id']} from 127.0.0.2; locked out" in log

    # Guessing spread over many addresses hits the client's ceiling: then every address waits
    addresses = [f"127.0.1.{n}" for n in range(1, THROTTLE_CLIENT_FAILURES // THROTTLE_FAILURES)]
    for address in addresses:
        for _ in range(THROTTLE_FAILURES):
            assert login_from(stack, address, creds, "guess").status_code == 401
    assert (THROTTLE_FAILURES * (len(addresses) + 1)) == THROTTLE_CLIENT_FAILURES
    everywhere = login_from(stack, "127.0.0.1", creds)
    assert (everywhere.status_code, everywhere.json()["code"]) == (429, 402)
    # The operator's remedy: a new secret lifts every lockout of the client
    rotated = sg(stack, "clients", "rotate-secret", creds["client_id"])
    assert login_from(stack, "127.0.0.1", creds, rotated["secret"]).status_code == 200
    assert login_from(stack, "127.0.0.2", creds, rotated["secret"]).status_code == 200


def test_sg_clients_list_disable_and_set_quota_print_json(stack, media):
    creds = new_client(stack, "probe")
    client_id = creds["client_id"]
    # list: every client, never a secret
    listed = {c["client_id"]: c for c in sg(stack, "clients", "list")["clients"]}
    assert listed[client_id]["scopes"] == ["probe"] and listed[client_id]["enabled"] is True
    assert all("secret" not in c and "secret_hash" not in c for c in listed.values())
    # set-quota: by id or name, per client and per service, `none` removes; the gateway applies it at once
    assert sg(stack, "clients", "set-quota", creds["name"], "max_in_flight", "2")["quotas"] == {"max_in_flight": 2}
    both = sg(stack, "clients", "set-quota", client_id, "max_jobs_per_day", "0", "--service", "probe")
    assert both["quotas"] == {"max_in_flight": 2, "services": {"probe": {"max_jobs_per_day": 0}}}
    token = token_for(stack, creds)
    refused = call(stack, "POST", "/probe/annotate", token, data={"doc_url": f"file://{media}/short.mp4"})
    assert refused.status_code == 429 and "max_jobs_per_day for probe" in refused.json()["description"]
    removed = sg(stack, "clients", "set-quota", client_id, "max_jobs_per_day", "none", "--service", "probe")
    assert removed["quotas"] == {"max_in_flight": 2}
    # disable: JSON says so, the token stops at once, list shows it
    off = sg(stack, "clients", "disable", client_id)
    assert off["client_id"] == client_id and off["enabled"] is False and "secret" not in off
    assert call(stack, "GET", "/jobs", token).json()["code"] == 224
    assert {c["client_id"]: c for c in sg(stack, "clients", "list")["clients"]}[client_id]["enabled"] is False
    # An unknown client or quota: a non-zero exit and a message, nothing printed as JSON
    for args in (["disable", "no-such-client"], ["set-quota", client_id, "max_jobs", "1"]):
        done = subprocess.run([str(BIN / "sg"), "clients", *args, "--json"], env=stack.env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and done.stdout == "" and done.stderr.strip(), args


def test_jobs_list_filters_by_time_range(stack, media):
    creds = new_client(stack, "probe")
    token = token_for(stack, creds)
    ids = []
    for _ in range(3):
        answer = call(stack, "POST", "/probe/annotate", token, data={"doc_url": f"file://{media}/short.mp4"})
        ids.append(answer.json()["uuid"])
    created = [call(stack, "GET", f"/jobs/{job_id}", token).json()["created_at"] for job_id in ids]
    assert created == sorted(created) and len(set(created)) == 3

    def listed(**params) -> list[str]:
        answer = call(stack, "GET", "/jobs", token, params={"sort": "created_at", **params})
        assert answer.status_code == 200, answer.text
        return [j["uuid"] for j in answer.json()["jobs"]]
    assert listed() == ids
    assert listed(since=created[1]) == ids[1:]                           # since: inclusive
    assert listed(until=created[1]) == ids[:1]                           # until: exclusive
    assert listed(since=created[0], until=created[2]) == ids[:2]
    zulu = created[1].replace("+00:00", "Z")
    assert listed(since=zulu, service="probe") == ids[1:]
    assert listed(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == []
    bad = call(stack, "GET", "/jobs", token, params={"since": "yesterday"})
    assert (bad.status_code, bad.json()["code"]) == (400, 204) and "since" in bad.json()["description"]


def test_reading_or_cancelling_outside_the_scopes_is_403_and_another_clients_job_stays_404(stack, media):
    a, b = new_client(stack, "probe", "transcode"), new_client(stack, "transcode")
    token_a, token_b = token_for(stack, a), token_for(stack, b)
    job_id = call(stack, "POST", "/probe/annotate", token_a, data={"doc_url": f"file://{media}/short.mp4"}).json()["uuid"]
    stack.wait_status("probe", job_id, {"SUCCESS"}, sub=a["client_id"])
    # A loses the probe scope: its own probe job is 403 (code and description) on read and cancel
    sg(stack, "clients", "set-scopes", a["client_id"], "transcode")
    for method, path in [("GET", f"/probe/status?uuid={job_id}"), ("POST", f"/probe/cancel?uuid={job_id}"),
                         ("GET", f"/jobs/{job_id}"), ("DELETE", f"/jobs/{job_id}")]:
        answer = call(stack, method, path, token_a)
        body = answer.json()
        assert (answer.status_code, body["code"]) == (403, 223), (method, path, body)
        assert "'probe'" in body["description"] and "transcode" in body["description"]
    # B (no probe scope either) gets for A's job exactly what it gets for an id that does not exist
    unknown = str(uuid.uuid4())
    for method, path in [("GET", "/jobs/{}"), ("DELETE", "/jobs/{}"), ("GET", "/probe/status?uuid={}"),
                         ("POST", "/probe/cancel?uuid={}")]:
        theirs = call(stack, method, path.format(job_id), token_b)
        nothing = call(stack, method, path.format(unknown), token_b)
        assert theirs.status_code == nothing.status_code and theirs.json()["code"] == nothing.json()["code"]
        assert theirs.json()["description"].replace(job_id, "U") == nothing.json()["description"].replace(unknown, "U")
        if path.startswith("/jobs/"):
            assert (theirs.status_code, theirs.json()["code"]) == (404, 203)


def test_purged_jobs_get_usage_records_and_webhooks(stack, media):
    from tests.test_webhooks import Receiver
    receiver = Receiver()
    try:
        creds = new_client(stack, "probe")
        token = token_for(stack, creds)
        path = f"/purged/{stack.name}"
        stack.stop_worker()
        try:
            ids = {call(stack, "POST", "/probe/annotate", token, data={
                "doc_url": f"file://{media}/short.mp4", "callback_url": receiver.url + path}).json()["uuid"]
                for _ in range(2)}
            purge = call(stack, "POST", "/admin/queues/probe/purge", stack.token("root", admin=True),
                         json={"confirm": "probe"})
            assert purge.status_code == 200 and purge.json()["jobs_revoked"] >= 2
        finally:
            stack.start_worker()
        (row,) = call(stack, "GET", "/usage", token).json()["usage"]      # written by the purge itself
        assert (row["jobs"], row["succeeded"], row["media_seconds"]) == (2, 0, 0.0)
        posts = wait_for(lambda: len(receiver.posts(path)) >= 2 and receiver.posts(path), 60, "two deliveries")
        assert {json.loads(p["body"])["uuid"]: json.loads(p["body"])["status"] for p in posts} == dict.fromkeys(
            ids, "REVOKED")
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
