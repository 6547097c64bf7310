#!/usr/bin/env python3
"""CPU per submit, per status and per worker run, in one process: what the hot-path fixes are measured by.

    .venv/bin/python benchmarks/inprocess_cpu.py [--requests 600] [--jobs 300] [--profile]

No HTTP server, no load generator: the gateway's WSGI app through Flask's test client and the
worker's ``Executor`` called directly, on a private RabbitMQ vhost, Redis db 9 and a fresh
PostgreSQL database (all on 127.0.0.1, dropped afterwards). ``time.process_time`` counts this
process's CPU only, so the figures move far less with machine load than wrk's rates do; they are
what docs/benchmarks.md quotes for "in-process CPU per submit / status / no-op job".
``--profile`` adds a cProfile (CPU clock) of each part, sorted by cumulative time.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import drop_postgres_database, drop_rabbitmq_vhost, postgres_database, rabbitmq_vhost  # noqa: E402


def cpu_ms(fn, count: int) -> float:
    """CPU milliseconds per call of ``fn`` over ``count`` calls."""
    start = time.process_time()
    for _ in range(count):
        fn()
    return 1000 * (time.process_time() - start) / count


def profile(fn, count: int, title: str) -> None:
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for _ in range(count):
        fn()
    prof.disable()
    print(f"\n== profile: {title}")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="submits and status reads measured")
    parser.add_argument("--jobs", type=int, default=300, help="no-op worker runs measured")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of each part")
    args = parser.parse_args()

    vhost, database = rabbitmq_vhost("sg-bench-cpu"), postgres_database("sg_bench_cpu")
    work = Path(tempfile.mkdtemp(prefix="sg-bench-cpu-"))
    (work / "input.bin").write_bytes(os.urandom(1000))
    secret = "bench-" + secrets.token_hex(24)
    os.environ.update({
        "SG_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "SG_RESULT_BACKEND": "redis://127.0.0.1:6379/9",
        "SG_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "SG_JWT_SECRET": secret, "SG_DATA_DIR": str(work / "data"), "SG_LOG_FORMAT": "json",
        "SG_LOG_LEVEL": "WARNING", "SG_FILE_ROOTS": str(work), "SG_ALLOW_PRIVATE_URLS": "true",
        "SG_SERVICE_MODULES": "workers.services.probe,benchmarks.noop_service",
    })
    try:
        from celery import states

        from service_gateway import create_app
        from service_gateway.auth import make_token
        from service_gateway.runtime import Runtime
        from service_gateway.settings import load_settings
        from service_gateway.status import JobStatus
        from workers.sdk.app import worker_app
        from workers.sdk.executor import CeleryBackendSink, Executor

        app = create_app()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {make_token(secret, 'bench', expires_in_s=3600)}"}
        doc_url = f"file://{work}/input.bin"

        def submit() -> str:
            answer = client.post("/noop/annotate", data={"doc_url": doc_url}, headers=headers)
            assert answer.status_code == 202, answer.get_data()
            return answer.get_json()["uuid"]

        settings = load_settings()
        rt = Runtime(settings)
        rt.store.migrate()
        pending = [submit() for _ in range(50)][-1]          # warm-up; the last one stays PENDING
        finished = submit()
        rt.store.claim(finished, "bench", lease_owner="bench:1")
        rt.store.finish(finished, JobStatus.SUCCESS, progress=100)
        rt.celery.backend.store_result(finished, {"ok": True}, states.SUCCESS)

        def status(job_id: str):
            return lambda: client.get(f"/noop/status?uuid={job_id}", headers=headers)

        service = __import__("benchmarks.noop_service", fromlist=["service"]).service
        executor = Executor(settings, CeleryBackendSink(worker_app().backend, settings.state_write_retry_s),
                            rt.store)

        def queued(count: int):
            """``count`` recorded jobs, then a callable that runs the next one (the INSERTs are not timed)."""
            ids = [str(uuid.uuid4()) for _ in range(count)]
            for job_id in ids:
                rt.store.add(uuid=job_id, owner="bench", service="noop", queue="noop", status="PENDING",
                             doc_url=doc_url, params={}, misc={}, progress=0, cancel_requested=False)
            it = iter(ids)
            return lambda: executor.execute(service, {"job_id": next(it), "service": "noop", "doc_url": doc_url,
                                                      "params": {}, "misc": {}})

        cpu_ms(queued(30), 30)                                  # warm-up
        print(f"submit POST /noop/annotate: {cpu_ms(submit, args.requests):.2f} ms CPU per request")
        print(f"status of a PENDING job:    {cpu_ms(status(pending), args.requests):.2f} ms CPU per request")
        print(f"status of a SUCCESS job:    {cpu_ms(status(finished), args.requests):.2f} ms CPU per request")
        print(f"worker run of a no-op job:  {cpu_ms(queued(args.jobs), args.jobs):.2f} ms CPU per job "
              "(Executor.execute: claim, states, fetch, finish, usage)")
        if args.profile:
            profile(submit, args.requests // 2, "submit")
            profile(status(pending), args.requests // 2, "status of a PENDING job")
            profile(queued(args.jobs // 2), args.jobs // 2, "worker run of a no-op job")
    finally:
        drop_rabbitmq_vhost(vhost)
        drop_postgres_database(database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
