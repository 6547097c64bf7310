"""Fuzz the real gateway (gunicorn + worker) with schemathesis, driven by its own GET /openapi.json.

Every operation of the spec gets generated requests, schema-valid and schema-invalid, with a valid
token and without one; every answer must be below 500 and match the spec: its status code, content
type, headers and body (the uniform error shape, narrowed to the codes documented for that status).

Keeping it bounded (this module < 60 s on 2 cores):
- Only the embedded stack: the RabbitMQ stack runs the same gateway code, and fuzzing it too would
  double the time for little more coverage (the broker is only touched at submit, which is stopped
  by the quota below anyway).
- Submits never create jobs: the token used for them is a client's whose quota `max_in_flight` is 0,
  so a submit goes through every check (doc_url, parameters, Idempotency-Key...) and then gets 429
  (code 401) without anything recorded or enqueued; half of the generated submits get a real, allowed
  doc_url so that the parameters are validated too (a refused doc_url is answered before them).
- Fewer examples where each request is slow on purpose (Argon2 in logins and client creation).
- Hypothesis runs derandomized (the same requests each run) and without shrinking: a failure is
  reported with the request that failed, as a curl command.
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

pytestmark = pytest.mark.e2e

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
#: Examples per operation: (valid token, valid token with schema-invalid data, no valid token). Auth is checked
#: before anything else, so a few anonymous ones suffice. A long run: FUZZ_SCALE=10 FUZZ_BUDGET_S=600.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
GENERIC = (30, 20, 5)
#: The per-service copies of the `/{svc}/...` routes: the bodies differ per service (its parameter schema), so
#: submits get more; the other copies differ from the generic route only in the path.
SERVICE_SUBMIT, SERVICE_OTHER = (25, 15, 0), (4, 2, 0)
#: Operations that are slow by design (Argon2 hashing) get fewer.
SLOW = {("POST", "/auth/access-token"): (10, 6, 3), ("POST", "/admin/clients"): (10, 6, 3),
        ("POST", "/admin/clients/{client_id}/rotate-secret"): (10, 6, 3)}
SUBMIT_SUFFIXES = ("/process", "/annotate", "/annotate/{storage_doc_id}")
ANONYMOUS_HEADERS = ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "garbage"})
#: Seconds of fuzzing (the stack's start and stop come on top): counts shrink when the machine is slower.
BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "32"))


def _examples(method: str, path: str, services: set[str]) -> tuple[int, int, int]:
    first = path.split("/")[1]
    if first in services:
        counts = SERVICE_SUBMIT if path.endswith(("/process", "/annotate")) else SERVICE_OTHER
    else:
        counts = SLOW.get((method, path), GENERIC)
    return tuple(max(1, round(c * SCALE)) if c else 0 for c in counts)  # type: ignore[return-value]


def _hypothesis(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                    verbosity=Verbosity.quiet)


@pytest.fixture(scope="module")
def tokens(stack) -> dict[str, str]:
    """An admin token, and a client's token that may submit to every service but has a quota of 0 jobs."""
    admin = stack.headers(admin=True)
    created = stack.session.post(f"{stack.url}/admin/clients", headers=admin, timeout=30, json={
        "name": "fuzzer", "scopes": ["*"], "quotas": {"max_in_flight": 0}})
    assert created.status_code == 201, created.text
    body = created.json()
    token = stack.session.post(f"{stack.url}/auth/access-token", timeout=30,
                               json={"client_id": body["client_id"], "secret": body["secret"]})
    assert token.status_code == 200, token.text
    return {"admin": admin["Authorization"], "client": f"Bearer {token.json()['access_token']}"}


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_gateway_answers_every_generated_request_as_its_spec_says(stack, tokens):
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    session = requests.Session()
    doc_url = f"file://{stack.settings.file_roots[0]}/short.mp4"
    registry = session.get(f"{stack.url}/services", headers={"Authorization": tokens["admin"]}, timeout=30)
    services = {item["name"] for item in registry.json()["services"]}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    plans = [(op, _examples(op.method.upper(), op.path, services)) for op in operations]

    failures: list[str] = []
    sent_per_operation: dict[str, int] = {}
    started = time.monotonic()
    planned_left = sum(sum(counts) for _, counts in plans)
    for operation, counts in plans:
        method, path = operation.method.upper(), operation.path
        # Stay within the budget on a loaded machine: shrink what is left by the pace measured so far.
        elapsed, sent_so_far = time.monotonic() - started, sum(sent_per_operation.values())
        pace_s = elapsed / sent_so_far if sent_so_far > 100 else 0.02
        scale = min(1.0, max(0.1, (BUDGET_S - elapsed) / max(planned_left * pace_s, 1e-6)))
        planned_left -= sum(counts)
        admin_route = path.startswith("/admin/") or path == "/metrics"
        valid = {"Authorization": tokens["admin" if admin_route else "client"]}
        runs = [("valid token", GenerationMode.POSITIVE, counts[0], True),
                ("valid token, invalid data", GenerationMode.NEGATIVE, counts[1], True),
                ("no valid token", GenerationMode.POSITIVE, counts[2], False)]
        sent = 0
        for label, mode, examples, authorized in runs:
            if not examples:
                continue
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

            @_hypothesis(max(1, round(examples * scale)))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                nonlocal sent
                headers = dict(valid) if authorized else dict(ANONYMOUS_HEADERS[sent % len(ANONYMOUS_HEADERS)])
                if authorized and path.endswith(SUBMIT_SUFFIXES) and isinstance(case.body, dict) and sent % 2:
                    case.body["doc_url"] = doc_url      # past the doc_url check, so parameters are checked too
                sent += 1
                response = case.call(base_url=stack.url, session=session, headers=headers, timeout=30)
                case.validate_response(response, checks=checks, headers=headers)

            try:
                fuzz()
            except Unsatisfiable:         # nothing to negate (no parameters): nothing to send
                continue
            except Exception as exc:      # collect them all: one run shows every operation that fails
                failures.append(f"{method} {path} ({label}):\n{exc}")
        sent_per_operation[f"{method} {path}"] = sent
    elapsed = time.monotonic() - started

    total = sum(sent_per_operation.values())
    print(f"\nfuzzed {len(operations)} operations with {total} requests in {elapsed:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert all(sent_per_operation.values()), [k for k, v in sent_per_operation.items() if not v]
    jobs = session.get(f"{stack.url}/jobs", headers={"Authorization": tokens["client"]}, timeout=30)
    assert jobs.status_code == 200 and jobs.json()["jobs"] == [], "a fuzzed submit created a job"
