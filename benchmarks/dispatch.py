#!/usr/bin/env python3
"""B3 dispatch latency and B4 end-to-end no-op throughput, gateway vs raw Celery, same broker.

    .venv/bin/python benchmarks/dispatch.py [--quick] [--embedded]

B3: one job at a time, from "accepted" to "worker started". Accepted is when the gateway records
the job (the store's ``created_at``, taken just before the INSERT; the publish with RabbitMQ's
confirm follows), or when raw ``send_task`` is called (its publish has the same confirm). Started
is the worker's own clock: the store's ``started_at`` (the worker's claim, when the job turns
STARTED) for the gateway, the first line of the bare task for the peer; the noop handler's first
line is given too. Same machine, same clock. (The client's 202 often arrives *after* the worker
has started, so it cannot be the origin.) Rounds alternate gateway and raw jobs; each job
finishes before the next is sent.

B4: N no-op jobs submitted by 8 client threads as fast as they are accepted, while the worker
(prefork, 2 processes) runs them; jobs/s = N / (last SUCCESS - first submit). The gateway's jobs
go through ``POST /noop/annotate`` and the worker SDK; the peer's through ``send_task`` and a bare
task. Both use the gateway's Celery factory and options (benchmarks/raw_celery.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import NOOP_QUEUE, BenchStack, embedded_stack, production_stack  # noqa: E402
from benchmarks.measure import CpuMeter, PySpy, Quick, percentile, summary, top_frames  # noqa: E402
from benchmarks.raw_celery import RAW_QUEUE, RAW_TASK  # noqa: E402

CLIENT_THREADS = 8
RESULT_TIMEOUT_S = 60


def _post(session: requests.Session, stack: BenchStack, headers: dict[str, str]) -> str:
    answer = session.post(f"{stack.url}/{NOOP_QUEUE}/annotate", headers=headers, timeout=30,
                          data={"doc_url": stack.doc_url()})
    if answer.status_code != 202:
        raise RuntimeError(f"submit answered {answer.status_code}: {answer.text[:200]}")
    return answer.json()["uuid"]


def _gateway_job(stack: BenchStack, session: requests.Session, headers: dict[str, str]) -> tuple[float, float]:
    """Submit one noop job, wait for SUCCESS; return (started - accepted, handler - accepted) in ms."""
    job_id = _post(session, stack, headers)
    result = stack.celery.AsyncResult(job_id).get(timeout=RESULT_TIMEOUT_S, interval=0.005)
    job = stack.store.get(job_id)
    assert job is not None and job.started_at is not None, job_id
    accepted = _aware(job.created_at).timestamp()
    return (_aware(job.started_at).timestamp() - accepted) * 1000, (result["handler_started"] - accepted) * 1000


def _aware(value):
    """SQLite hands back naive datetimes; they were stored as UTC."""
    from datetime import timezone
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _raw_job(stack: BenchStack) -> float:
    """Send one raw task, wait for it; return (task start - send) in ms."""
    accepted = time.time()
    result = stack.raw.send_task(RAW_TASK, args=[accepted], queue=RAW_QUEUE)
    stack.raw_ids.append(result.id)
    started = result.get(timeout=RESULT_TIMEOUT_S, interval=0.005)["start"]
    return (started - accepted) * 1000


def b3_dispatch(stack: BenchStack, q: Quick) -> dict[str, Any]:
    """B3: accepted -> worker started, sequential jobs, gateway and raw alternating."""
    if stack.kind == "production":
        stack.add_consumer(NOOP_QUEUE)
    session = requests.Session()
    headers = stack.headers("bench-b3")
    for _ in range(3):                                   # warm both pool processes of each worker
        _gateway_job(stack, session, headers)
        _raw_job(stack)
    runs: dict[str, list[dict[str, float]]] = {"gateway": [], "raw": []}
    handler_p50: list[float] = []
    for i in range(q.repeat):
        gateway, handler, raw = [], [], []
        for _ in range(q.dispatch_jobs):
            started, entered = _gateway_job(stack, session, headers)
            gateway.append(started)
            handler.append(entered)
            raw.append(_raw_job(stack))
        for peer, values in (("gateway", gateway), ("raw", raw)):
            runs[peer].append({"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
                               "min_ms": min(values), "max_ms": max(values), "jobs": len(values)})
        handler_p50.append(percentile(handler, 50))
        print(f"B3 {stack.kind} run {i + 1}: gateway p50 {runs['gateway'][-1]['p50_ms']:.2f} ms "
              f"p99 {runs['gateway'][-1]['p99_ms']:.2f} ms (handler p50 {handler_p50[-1]:.2f} ms); raw p50 "
              f"{runs['raw'][-1]['p50_ms']:.2f} ms p99 {runs['raw'][-1]['p99_ms']:.2f} ms", file=sys.stderr)
    out: dict[str, Any] = {"kind": stack.kind, "runs": runs, "handler_p50_ms": summary(handler_p50)}
    for peer, items in runs.items():
        out[peer] = {key: summary([r[key] for r in items]) for key in ("p50_ms", "p99_ms")}
    out["ratio"] = summary([g["p50_ms"] / r["p50_ms"] for g, r in zip(runs["gateway"], runs["raw"])])
    return out


def _gateway_throughput(stack: BenchStack, n: int, sub: str) -> dict[str, Any]:
    from sqlalchemy import text
    headers = stack.headers(sub)
    local = threading.local()

    def submit(_: int) -> str:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return _post(local.session, stack, headers)

    meter = CpuMeter().start()
    first = time.time()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        ids = list(pool.map(submit, range(n)))
    submitted = time.time()
    query = text("SELECT count(*), max(finished_at) FROM jobs WHERE owner = :o AND status = 'SUCCESS'")
    deadline = time.monotonic() + RESULT_TIMEOUT_S + n / 5
    while True:
        with stack.store.engine.connect() as conn:
            done, last = conn.execute(query, {"o": sub}).one()
        if done >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {n} gateway jobs reached SUCCESS")
        time.sleep(0.05)
    cpu = meter.stop()
    elapsed = _aware(last).timestamp() - first
    return {"jobs": len(ids), "rate": n / elapsed, "elapsed_s": elapsed, "submit_rate": n / (submitted - first),
            "cpu_s": cpu, "cpu_ms_per_job": round(1000 * cpu["machine total"] / n, 1)}


def _raw_throughput(stack: BenchStack, n: int) -> dict[str, Any]:
    meter = CpuMeter().start()
    first = time.time()

    def send(_: int):
        return stack.raw.send_task(RAW_TASK, args=[time.time()], queue=RAW_QUEUE)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(send, range(n)))
    submitted = time.time()
    stack.raw_ids.extend(r.id for r in results)
    ends = _wait_raw_results(stack, [r.id for r in results])
    cpu = meter.stop()
    elapsed = max(ends) - first
    return {"jobs": n, "rate": n / elapsed, "elapsed_s": elapsed, "submit_rate": n / (submitted - first), "cpu_s": cpu,
            "cpu_ms_per_job": round(1000 * cpu["machine total"] / n, 1)}


def _wait_raw_results(stack: BenchStack, ids: list[str]) -> list[float]:
    """End times of the raw tasks, read from Redis in batches once they are all there."""
    import redis
    client = redis.Redis.from_url(stack.settings.result_backend)
    keys = [f"celery-task-meta-{i}" for i in ids]
    deadline = time.monotonic() + RESULT_TIMEOUT_S + len(ids) / 50
    try:
        while True:
            values = [v for start in range(0, len(keys), 1000) for v in client.mget(keys[start:start + 1000])]
            if all(values):
                return [json.loads(v)["result"]["end"] for v in values]
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sum(1 for v in values if v)} of {len(ids)} raw tasks finished")
            time.sleep(0.05)
    finally:
        client.close()


def b4_throughput(stack: BenchStack, q: Quick) -> dict[str, Any]:
    """B4: end-to-end no-op jobs/s, gateway (submit -> SUCCESS) vs raw Celery (publish -> done)."""
    stack.add_consumer(NOOP_QUEUE)
    _gateway_throughput(stack, 20, "bench-b4-warmup")
    _raw_throughput(stack, 20)
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "raw": []}
    for i in range(q.repeat):
        order = ("gateway", "raw") if i % 2 == 0 else ("raw", "gateway")
        for peer in order:
            report = (_gateway_throughput(stack, q.throughput_jobs, f"bench-b4-{i}") if peer == "gateway"
                      else _raw_throughput(stack, q.throughput_jobs))
            runs[peer].append(report)
            print(f"B4 {peer:8s} run {i + 1}: {report['rate']:7.1f} jobs/s ({report['jobs']} jobs, submitted at "
                  f"{report['submit_rate']:.0f}/s)", file=sys.stderr)
    out: dict[str, Any] = {"runs": runs}
    for peer, items in runs.items():
        out[peer] = {key: summary([r[key] for r in items]) for key in ("rate", "submit_rate")}
    out["ratio"] = summary([g["rate"] / r["rate"] for g, r in zip(runs["gateway"], runs["raw"])])
    return out


def profile_worker(stack: BenchStack, prefix: Path, jobs: int) -> dict[str, Any]:
    """B4's gateway load while py-spy records the worker's pool processes; summarize where a job's time goes."""
    import psutil
    pool = [p.pid for p in psutil.Process(stack.procs["worker"].pid).children()]
    stack.add_consumer(NOOP_QUEUE)
    out: dict[str, Any] = {}
    for mode in ("gil", "wall"):
        seconds = 10
        with PySpy(pool, prefix, mode, seconds) as spy:
            report = _gateway_throughput(stack, jobs, f"bench-prof-{mode}")
        out[mode] = {"rate": round(report["rate"], 1), "files": [str(f) for f in spy.files],
                     "top": top_frames(spy.files, within="Executor.execute ")}
    prefix.with_name(prefix.name + "-summary.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few jobs, one repeat (smoke run)")
    parser.add_argument("--embedded", action="store_true", help="B3 on the embedded default instead")
    parser.add_argument("--profile", metavar="DIR", help="also profile the worker under B4's load with py-spy")
    args = parser.parse_args()
    q = Quick(args.quick)
    with tempfile.TemporaryDirectory(prefix="sg-bench-dispatch-") as tmp:
        if args.embedded:
            with embedded_stack(Path(tmp)) as stack:
                result = {"B3-embedded": b3_dispatch(stack, q)}
        else:
            with production_stack(Path(tmp)) as stack:
                result = {"B3": b3_dispatch(stack, q), "B4": b4_throughput(stack, q)}
                if args.profile:
                    result["profile"] = profile_worker(stack, Path(args.profile).resolve() / "b4-worker",
                                                       q.throughput_jobs)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
