"""Fuzz the gateway with schemathesis, driven by its own GET /openapi.json, in process (WSGI).

Every operation of the spec gets generated requests, schema-valid and schema-invalid, with a valid
token and without one; every answer must be below 500 and match the spec: its status code, content
type, headers and body (the uniform error shape, narrowed to the codes documented for that status).

The counts are fixed, not scaled by time: every route (a URL rule and method of the gateway; the
per-service copies ``/probe/process``, ``/faces/process``... of ``/{svc}/process`` are one route)
gets at least ROUTE_MIN generated requests, each operation its share (see ``_plan``). They stay
affordable because nothing leaves the process:
- The gateway's WSGI app is called directly (no gunicorn, no sockets); the embedded default's store
  is a SQLite file. The same code answers behind gunicorn; the e2e tests cover that path.
- A worker is recorded online on every queue (its heartbeat row; none runs), so that the routes
  that need a live worker answer as in production.
- Submits never create jobs: the token used for them is a client's whose quota `max_in_flight` is 0,
  so a submit goes through every check (doc_url, parameters, Idempotency-Key...) and then gets 429
  (code 401) without anything recorded or enqueued; half of the generated submits get a real, allowed
  doc_url so that the parameters are validated too (a refused doc_url is answered before them).
- Argon2 (client secrets, logins) runs with the cheapest parameters here: the code path is the same,
  the hash no longer costs ~50 ms a request.
- Hypothesis runs derandomized (the same requests each run) and without shrinking: a failure is
  reported with the request that failed, as a curl command.
A longer run: FUZZ_SCALE=10 multiplies every count.
"""
from __future__ import annotations

import os
import string
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from service_gateway.auth import make_token

JWT_SECRET = "fuzz-secret-0123456789abcdef-0123456789"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
SCALE = max(1.0, float(os.environ.get("FUZZ_SCALE", "1")))
#: Generated requests per route, at least (a route: a URL rule and method, its per-service copies included).
ROUTE_MIN = 200
#: Generated cases per operation: (schema-valid, schema-invalid). Each case is sent twice, with a valid
#: token and with a generated invalid one (none, expired, signed with another key, garbage), so an
#: operation gets 2 x (valid + invalid) requests: generating a case costs more than answering it.
GENERIC = (70, 30)
#: ``/{svc}/...`` and its 7 per-service copies (one route): the bodies differ per service (its parameter
#: schema), so the copies of the submits get more; the other copies differ from the generic one only in the path.
SVC_GENERIC, SVC_SUBMIT, SVC_OTHER = (25, 15), (15, 8), (7, 3)
SUBMIT_SUFFIXES = ("/process", "/annotate", "/annotate/{storage_doc_id}")
_TOKEN_CHARS = string.ascii_letters + string.digits + "._-+/="
#: Only the operations whose "METHOD /path" contains this (to replay one while debugging).
ONLY = os.environ.get("FUZZ_ONLY", "")


def _hypothesis(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                    verbosity=Verbosity.quiet)


def _plan(path: str, services: set[str]) -> tuple[int, int]:
    """The operation's numbers of (schema-valid, schema-invalid) generated cases, scaled."""
    first = path.split("/")[1]
    if first == "{svc}":
        counts = SVC_GENERIC
    elif first in services:
        counts = SVC_SUBMIT if path.endswith(("/process", "/annotate", "/annotate/{storage_doc_id}")) else SVC_OTHER
    else:
        counts = GENERIC
    return round(counts[0] * SCALE), round(counts[1] * SCALE)


def _route(method: str, path: str, services: set[str]) -> str:
    parts = path.split("/")
    if parts[1] in services:
        parts[1] = "{svc}"
    return f"{method} {'/'.join(parts)}"


def anonymous_headers() -> st.SearchStrategy[dict[str, str]]:
    """No token, an expired one, one signed with another secret, and generated garbage."""
    fixed = [{}, {"Authorization": f"Bearer {make_token(JWT_SECRET, 'alice', expires_in_s=-60)}"},
             {"Authorization": f"Bearer {make_token('another-secret-0123456789abcdef-0123', 'alice')}"},
             {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "garbage"}]
    generated = st.text(_TOKEN_CHARS, max_size=80)
    return st.one_of(st.sampled_from(fixed), generated.map(lambda t: {"Authorization": f"Bearer {t}"}),
                     generated.map(lambda t: {"Authorization": t}))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The gateway's WSGI app on the embedded default, with cheap Argon2 parameters."""
    from argon2 import PasswordHasher

    from service_gateway import clients, create_app
    root = tmp_path_factory.mktemp("fuzz")
    (root / "media").mkdir()
    (root / "media" / "short.mp4").write_bytes(b"\0" * 64)
    saved = clients._hasher, clients._DUMMY_HASH
    clients._hasher, clients._DUMMY_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1), None
    try:
        app = create_app({"data_dir": str(root / "data"), "jwt_secret": JWT_SECRET, "log_format": "text",
                          "log_level": "ERROR", "file_roots": [str(root / "media")], "sse_max_s": 0.2,
                          "worker_heartbeat_s": 3600})
        # A worker on every queue, as its heartbeat records it (none runs: no job is ever enqueued), so
        # that the routes that need a live worker (/{svc}/stats) answer as in production
        rt = app.extensions["service_gateway"]
        rt.store.heartbeat("fuzz@host", sorted(rt.queues), 1, datetime.now(timezone.utc))
        yield app, f"file://{root}/media/short.mp4"
    finally:
        clients._hasher, clients._DUMMY_HASH = saved


@pytest.fixture(scope="module")
def tokens(gateway) -> dict[str, str]:
    """An admin token, and a client's token that may submit to every service but has a quota of 0 jobs."""
    app, _ = gateway
    client = app.test_client()
    admin = f"Bearer {make_token(JWT_SECRET, 'fuzz-admin', admin=True)}"
    created = client.post("/admin/clients", headers={"Authorization": admin}, json={
        "name": "fuzzer", "scopes": ["*"], "quotas": {"max_in_flight": 0}})
    assert created.status_code == 201, created.text
    body = created.json
    token = client.post("/auth/access-token", json={"client_id": body["client_id"], "secret": body["secret"]})
    assert token.status_code == 200, token.text
    return {"admin": admin, "client": f"Bearer {token.json['access_token']}"}


# schemathesis's WSGI transport leaves the file of a static response (/docs assets) to the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_gateway_answers_every_generated_request_as_its_spec_says(gateway, tokens):
    app, doc_url = gateway
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    registry = app.test_client().get("/services", headers={"Authorization": tokens["admin"]})
    services = {item["name"] for item in registry.json["services"]}
    operations = [op for op in (result.ok() for result in schema.get_all_operations())
                  if ONLY in f"{op.method.upper()} {op.path}"]
    assert len(operations) > 40 or ONLY

    failures: list[str] = []
    sent_per_operation: Counter[str] = Counter()
    sent_per_route: Counter[str] = Counter()
    seconds_per_operation: dict[str, float] = {}
    started = time.monotonic()
    for operation in operations:
        method, path = operation.method.upper(), operation.path
        positive, negative = _plan(path, services)
        admin_route = path.startswith("/admin/") or path == "/metrics"
        valid = {"Authorization": tokens["admin" if admin_route else "client"]}
        sent = 0
        op_started = time.monotonic()

        def run(label: str, mode: GenerationMode, examples: int) -> bool:
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

            @_hypothesis(examples)
            @given(case=operation.as_strategy(generation_mode=mode), anonymous=anonymous_headers())
            def fuzz(case: Any, anonymous: dict[str, str]) -> None:
                nonlocal sent
                if path.endswith(SUBMIT_SUFFIXES) and isinstance(case.body, dict) and sent % 4:
                    case.body["doc_url"] = doc_url      # past the doc_url check, so parameters are checked too
                for headers in (valid, anonymous):
                    sent += 1
                    response = case.call(headers=headers)
                    case.validate_response(response, checks=checks, headers=headers)

            try:
                fuzz()
            except Unsatisfiable:         # nothing to negate (no parameters): nothing to send
                return False
            except Exception as exc:      # collect them all: one run shows every operation that fails
                failures.append(f"{method} {path} ({label}):\n{exc}")
            return True

        negated = run("schema-invalid data", GenerationMode.NEGATIVE, negative)
        run("schema-valid data", GenerationMode.POSITIVE, positive if negated else positive + negative)
        sent_per_operation[f"{method} {path}"] = sent
        seconds_per_operation[f"{method} {path}"] = time.monotonic() - op_started
        sent_per_route[_route(method, path, services)] += sent
    elapsed = time.monotonic() - started

    total = sum(sent_per_operation.values())
    print(f"\nfuzzed {len(operations)} operations ({len(sent_per_route)} routes) with {total} requests "
          f"in {elapsed:.1f} s; fewest per route: {min(sent_per_route.values())}; slowest operations: "
          + ", ".join(f"{op} {t:.1f} s" for op, t in sorted(seconds_per_operation.items(), key=lambda i: -i[1])[:5]))
    assert not failures, "\n\n".join(failures)
    short = {route: n for route, n in sent_per_route.items() if n < ROUTE_MIN * SCALE}
    assert not short, f"routes with fewer than {ROUTE_MIN} generated requests: {short}"
    jobs = app.test_client().get("/jobs", headers={"Authorization": tokens["client"]})
    assert jobs.status_code == 200 and jobs.json["jobs"] == [], "a fuzzed submit created a job"
