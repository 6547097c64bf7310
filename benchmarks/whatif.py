#!/usr/bin/env python3
"""What the proposed fixes would buy: a stock stack and a stack with the fixes, side by side.

    .venv/bin/python benchmarks/whatif.py [--quick]

Not part of `make bench`, and not the product: the fixes proposed in docs/benchmarks.md ("Where
the time goes") are applied here by monkeypatching the gateway (benchmarks/whatif_gunicorn.py)
and the worker (``celery -A benchmarks.whatif worker``), so that their effect can be measured
before anyone changes service_gateway/ or workers/. Delete this once they land. The fixes:

1. job store engine without ``pool_pre_ping`` and with ``pool_size`` = the gunicorn threads (8),
   so a checkout neither pings PostgreSQL nor opens a new session (gateway and worker);
2. ``send_task(..., ignore_result=True)`` when the gateway publishes: no Redis SUBSCRIBE /
   UNSUBSCRIBE of a result channel per submit, nobody ever waits on it;
3. ``task_send_sent_event = False`` on the gateway's Celery app: no second AMQP publish per
   submit, no process-wide lock around it.

Both stacks run at once (the idle one costs next to nothing); B1 (submit), B2 (status of a
finished job) and B4 (end-to-end no-op jobs/s) alternate between them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXED_POOL_SIZE = 8


def apply(side: str) -> None:
    """Patch this process: ``gateway`` gets fixes 1-3, ``worker`` fix 1."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from service_gateway import store
    stock_engine = store.make_engine

    def make_engine(url: str):
        if make_url(url).get_backend_name() == "sqlite":
            return stock_engine(url)
        return create_engine(url, pool_pre_ping=False, pool_size=FIXED_POOL_SIZE, max_overflow=10,
                             pool_recycle=3600, isolation_level="AUTOCOMMIT")
    store.make_engine = make_engine
    if side != "gateway":
        return

    from service_gateway import celery_app, runtime
    stock_celery = celery_app.make_celery

    def make_celery(settings, routes):
        app = stock_celery(settings, routes)
        app.conf.task_send_sent_event = False
        send = app.send_task
        app.send_task = lambda *args, **kwargs: send(*args, **{"ignore_result": True, **kwargs})
        return app
    celery_app.make_celery = runtime.make_celery = make_celery


def __getattr__(name: str):
    """``celery -A benchmarks.whatif worker``: the workers' app, built after fix 1 is applied."""
    if name in ("app", "celery"):
        apply("worker")
        from workers import app
        return app
    raise AttributeError(name)


def _sessions(stack, before: int, figure: str, record, side: str) -> int:
    import time
    time.sleep(1.1)                                       # PostgreSQL flushes its counters about every second
    after = stack.pg_sessions()
    record(figure, side, after - before)
    return after


def main() -> int:
    from benchmarks import dispatch, http_load
    from benchmarks.harness import production_stack
    from benchmarks.measure import Quick, run_wrk, summary
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--figures", nargs="*", default=["B1", "B2", "B4"], help="which of B1 B2 B4")
    args = parser.parse_args()
    q = Quick(args.quick)
    fixed_options = {"gunicorn_config": str(ROOT / "benchmarks" / "whatif_gunicorn.py"),
                     "worker_app": "benchmarks.whatif"}
    runs: dict[str, dict[str, list[float]]] = {}

    def record(figure: str, side: str, value: float) -> None:
        runs.setdefault(figure, {"stock": [], "fixed": []})[side].append(value)
        print(f"{figure:24s} {side:5s} {value:8.1f}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="sg-bench-whatif-") as tmp:
        (Path(tmp) / "stock").mkdir()
        (Path(tmp) / "fixed").mkdir()
        with production_stack(Path(tmp) / "stock", flower=False, raw=False) as stock, \
                production_stack(Path(tmp) / "fixed", fixed_options, flower=False, raw=False) as fixed:
            stacks = {"stock": stock, "fixed": fixed}
            finished = {}
            for side, stack in stacks.items():
                job_id = http_load._submit_one(stack, "whatif")
                stack.celery.AsyncResult(job_id).get(timeout=60, interval=0.01)
                finished[side] = job_id
            for i in range(q.repeat):
                for side in ("stock", "fixed") if i % 2 == 0 else ("fixed", "stock"):
                    stack = stacks[side]
                    if "B1" in args.figures:
                        before = stack.pg_sessions()
                        b1 = run_wrk(**http_load._submit_request(stack, "gateway", f"whatif-b1-{i}"),
                                     seconds=q.load_s)
                        record("B1 submit req/s", side, b1["rate"])
                        record("B1 submit p99 ms", side, b1["p99_ms"])
                        _sessions(stack, before, "B1 PostgreSQL sessions opened", record, side)
                    if "B2" in args.figures:
                        before = stack.pg_sessions()
                        b2 = run_wrk(**http_load._status_request(stack, "gateway", finished[side], "whatif"),
                                     seconds=q.load_s)
                        record("B2 status req/s", side, b2["rate"])
                        record("B2 status p99 ms", side, b2["p99_ms"])
                        _sessions(stack, before, "B2 PostgreSQL sessions opened", record, side)
                    if "B4" in args.figures:
                        b4 = dispatch._gateway_throughput(stack, q.throughput_jobs // 2, f"whatif-b4-{side}-{i}")
                        record("B4 no-op jobs/s", side, b4["rate"])
                        record("B4 machine CPU ms/job", side, b4["cpu_ms_per_job"])
                        for group in ("worker (celery -A workers)", "gateway (gunicorn)", "postgresql", "rabbitmq"):
                            record(f"B4 {group.split()[0]} CPU ms/job", side,
                                   1000 * b4["cpu_s"].get(group, 0.0) / b4["jobs"])
    result = {figure: {side: summary(values) for side, values in sides.items()} for figure, sides in runs.items()}
    print(json.dumps(result, indent=2))
    print("\n| figure | stock | with the fixes | fixed/stock |\n|---|---|---|---|")
    for figure, sides in result.items():
        s, f = sides["stock"]["median"], sides["fixed"]["median"]
        print(f"| {figure} | {s:.2f} | {f:.2f} | {f / s:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
