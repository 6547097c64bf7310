#!/usr/bin/env python3
"""GET /jobs with 100,000 jobs in the job store: first page, filtered, through gunicorn.

    .venv/bin/python benchmarks/jobs_list.py [--jobs 100000] [--requests 300] [--backend postgresql|sqlite]

Fills a fresh job store (PostgreSQL on 127.0.0.1 by default, or SQLite) with jobs spread over
100 owners, 7 services and 4 statuses over 90 days, starts the gateway under gunicorn (2 gthread
workers) and times the first page of three filtered listings, sequentially, from a client on
loopback. Prints p50/p99 per query (target p99 <= 50 ms) and the query plan PostgreSQL chooses.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service_gateway.auth import make_token  # noqa: E402
from service_gateway.store import Job, JobStore  # noqa: E402
from tests.stack import BIN, drop_postgres_database, free_port, postgres_database, wait_for  # noqa: E402

SERVICES = ("probe", "transcode", "thumbnails", "transitions", "loudness", "speech", "faces")
STATUSES = ("SUCCESS", "SUCCESS", "SUCCESS", "FAILURE", "REVOKED", "PENDING")
SECRET = "bench-secret-0123456789abcdef0123456789"
TARGET_P99_MS = 50.0


def fill(store: JobStore, count: int, owners: int) -> None:
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    batch = []
    for i in range(count):
        created = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
        status = rng.choice(STATUSES)
        service = rng.choice(SERVICES)
        batch.append({"uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "owner": f"owner-{i % owners}",
                      "service": service, "queue": service, "status": status,
                      "doc_url": f"https://media.example/{i}.mp4", "params": {}, "misc": {}, "progress": 100,
                      "cancel_requested": False, "created_at": created,
                      "finished_at": None if status == "PENDING" else created + timedelta(seconds=30)})
        if len(batch) == 5000:
            _insert(store, batch)
            batch = []
    if batch:
        _insert(store, batch)


def _insert(store: JobStore, rows: list[dict]) -> None:
    with store.engine.connect() as conn:
        conn.execute(Job.__table__.insert(), rows)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-jobs-"))
    database = None
    if args.backend == "postgresql":
        database = postgres_database()
        url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    else:
        url = f"sqlite:///{tmp / 'jobs.sqlite'}"
    store = JobStore(url)
    store.migrate()
    started = time.monotonic()
    fill(store, args.jobs, args.owners)
    if args.backend == "postgresql":
        with store.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE jobs")
    print(f"filled {args.jobs} jobs in {time.monotonic() - started:.1f} s ({args.backend})", file=sys.stderr)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SG_")}
    env.update({"SG_DATA_DIR": str(tmp / "data"), "SG_DATABASE_URL": url, "SG_JWT_SECRET": SECRET,
                "SG_LOG_LEVEL": "WARNING"})
    gateway = subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                "--worker-class", "gthread", "--threads", "8", "service_gateway:create_app()"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), 60, "the gateway")
        owner = "owner-7"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {make_token(SECRET, owner)}"
        queries = {
            "first page (50), newest first": {},
            "service=transcode&status=SUCCESS": {"service": "transcode", "status": "SUCCESS"},
            "since 7 days, limit 20": {"since": (datetime.now(timezone.utc) - timedelta(days=7)).isoformat(),
                                       "limit": 20},
        }
        rows = []
        for name, params in queries.items():
            for _ in range(20):                                   # warm both gunicorn workers
                session.get(f"{base}/jobs", params=params, timeout=10).raise_for_status()
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = session.get(f"{base}/jobs", params=params, timeout=10)
                times.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
            count = len(response.json()["jobs"])
            p50, p99 = statistics.median(times), percentile(times, 99)
            met = "met" if p99 <= TARGET_P99_MS else "NOT met"
            rows.append(f"| {name} | {count} | {p50:.1f} | {p99:.1f} | {met} |")
        print(f"\nGET /jobs, {args.jobs} jobs in {args.backend}, {args.owners} owners (~{args.jobs // args.owners} "
              f"jobs each), {args.requests} sequential requests per query, gunicorn 2x gthread\n")
        print("| query (owner-7) | jobs on page | p50 ms | p99 ms | target p99 <= 50 ms |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
        if args.backend == "postgresql":
            with store.engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN SELECT * FROM jobs WHERE owner = 'owner-7' AND service = 'transcode' "
                    "AND status = 'SUCCESS' ORDER BY created_at DESC, uuid DESC LIMIT 51").all()
            print("\nPlan of the filtered query:\n\n    " + "\n    ".join(r[0] for r in plan))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
        store.engine.dispose()
        if database:
            drop_postgres_database(database)
    return 0


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
