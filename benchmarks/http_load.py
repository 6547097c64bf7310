#!/usr/bin/env python3
"""B1 submit and B2 status under load, side by side with Flower's API, with wrk on loopback.

    .venv/bin/python benchmarks/http_load.py [--quick] [--profile DIR]

B1: ``POST /noop/annotate`` (form args, operator JWT) vs Flower 2.x ``POST /api/task/async-apply/sg.noop``
on the same RabbitMQ vhost, 16 connections, wrk runs alternated gateway/Flower, repeated. No
worker consumes the ``noop`` queue during B1, so "zero lost" is checked exactly: every uuid of a
2xx answer must be a job in the PostgreSQL store and a message in the queue (drained after each
run, which also purges it). The RSS of each gunicorn process is sampled meanwhile (B7).

B2: ``GET /noop/status?uuid=`` of a finished (SUCCESS) and of a running (PROGRESS) job vs Flower's
``GET /api/task/result/<id>`` of the same ids.

``--profile DIR`` runs one more gateway load of each kind with py-spy recording every gunicorn
process (``py-spy record --format raw``: ``--gil`` for where Python CPU goes, ``--idle`` for where
a request's wall time goes) and writes the collapsed stacks (flame-graph input) and a
top-functions summary to DIR; it is not part of `make bench` (sampling slows the gateway).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import NOOP_QUEUE, BenchStack, production_stack  # noqa: E402
from benchmarks.measure import (FLOWER_ID_PATTERN, UUID_PATTERN, CpuMeter, PySpy, Quick, RssSampler,  # noqa: E402
                                run_wrk, summary, top_frames)
from tests.stack import wait_for  # noqa: E402

CONNECTIONS = 16


def _submit_request(stack: BenchStack, peer: str, sub: str) -> dict[str, Any]:
    """The wrk arguments of one B1 submit for ``peer`` ("gateway" or "flower")."""
    if peer == "gateway":
        return {"url": f"{stack.url}/{NOOP_QUEUE}/annotate", "method": "POST",
                "body": "doc_url=" + quote(stack.doc_url(), safe=""),
                "content_type": "application/x-www-form-urlencoded",
                "authorization": f"Bearer {stack.token(sub)}", "id_pattern": UUID_PATTERN}
    # The same task with the argument the gateway would have sent.
    payload = {"job_id": "00000000-0000-4000-8000-000000000000", "service": NOOP_QUEUE, "doc_url": stack.doc_url(),
               "params": {"sleep_s": 0}, "misc": {}, "ann_doc_id": None, "callback_url": None, "request_id": None}
    return {"url": f"{stack.flower_url}/api/task/async-apply/sg.{NOOP_QUEUE}", "method": "POST",
            "body": json.dumps({"args": [payload]}), "content_type": "application/json",
            "id_pattern": FLOWER_ID_PATTERN}


def _store_ids(stack: BenchStack, owner: str) -> set[str]:
    from sqlalchemy import text
    with stack.store.engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT uuid FROM jobs WHERE owner = :o"), {"o": owner})}


def b1_submit(stack: BenchStack, q: Quick, profile_dir: Path | None = None) -> dict[str, Any]:
    """B1 (and the gateway-RSS part of B7): submit under load, gateway vs Flower async-apply."""
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "flower": []}
    rss_peaks: list[float] = []
    stack.drain(NOOP_QUEUE)
    for peer in ("gateway", "flower") if q.warmup_s else ():  # warm both (connections, lazy imports, caches)
        run_wrk(**_submit_request(stack, peer, "bench-b1-warmup"), seconds=q.warmup_s, connections=CONNECTIONS)
    time.sleep(0.5)
    stack.drain(NOOP_QUEUE)
    for i in range(q.repeat):
        for peer in ("gateway", "flower") if i % 2 == 0 else ("flower", "gateway"):
            sub = f"bench-b1-{peer}-{i}"
            sessions = stack.pg_sessions()
            meter = CpuMeter().start()
            with RssSampler(stack.gunicorn_workers()) as rss:
                report = run_wrk(**_submit_request(stack, peer, sub), seconds=q.load_s, connections=CONNECTIONS)
            report["cpu_s"] = meter.stop()
            _evidence(stack, report, peer, sessions)
            time.sleep(0.5)                                  # requests cut by wrk's stop finish their publish
            in_broker = stack.drain(NOOP_QUEUE)
            accepted = report.pop("ids")
            report["accepted"] = len(accepted)
            report["in_broker"] = len(in_broker)
            broker = set(in_broker)
            if peer == "gateway":
                store = _store_ids(stack, sub)
                report["in_store"] = len(store)
                report["lost"] = sum(1 for job in accepted if job not in store or job not in broker)
                report["extra_in_store"] = len(store - set(accepted))
                report["rss_mib"] = {str(pid): round(peak, 1) for pid, peak in rss.peak.items()}
                rss_peaks.append(max(rss.peak.values()))
            else:
                report["lost"] = sum(1 for task in accepted if task not in broker)
            runs[peer].append(report)
            print(f"B1 {peer:8s} run {i + 1}: {report['rate']:7.1f} req/s, p50 {report['p50_ms']:.1f} ms, "
                  f"p99 {report['p99_ms']:.1f} ms, 2xx {report['ok']}, lost {report['lost']}", file=sys.stderr)
    result = _pair(runs)
    result["gateway_rss_mib"] = summary(rss_peaks)
    result["gunicorn_processes"] = len(stack.gunicorn_workers())
    if profile_dir is not None:
        result["profile"] = profile(stack, profile_dir / "b1-submit", _submit_request(stack, "gateway", "bench-prof"),
                                    q.load_s)
        stack.drain(NOOP_QUEUE)
    return result


def _evidence(stack: BenchStack, report: dict[str, Any], peer: str, sessions_before: int | None) -> None:
    """What the profiles point at, counted per run: server CPU per request, new PostgreSQL sessions."""
    group = "gateway (gunicorn)" if peer == "gateway" else "flower"
    report["server_cpu_ms_per_request"] = round(1000 * report["cpu_s"].get(group, 0.0) / max(1, report["requests"]), 2)
    if peer == "gateway" and sessions_before is not None:
        time.sleep(1.1)                                   # PostgreSQL flushes its counters about every second
        report["pg_sessions_opened"] = stack.pg_sessions() - sessions_before


def _pair(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for peer, items in runs.items():
        out[peer] = {key: summary([r[key] for r in items]) for key in ("rate", "ok_rate", "p50_ms", "p99_ms")}
        out[peer]["lost"] = sum(r["lost"] for r in items) if items and "lost" in items[0] else None
        out[peer]["non_2xx"] = sum(r["requests"] - r["ok"] for r in items)
        out[peer]["command"] = items[0]["command"] if items else ""
    ratios = [g["rate"] / f["rate"] for g, f in zip(runs["gateway"], runs["flower"])]
    out["ratio"] = summary(ratios)
    return out


def _status_request(stack: BenchStack, peer: str, job_id: str, sub: str) -> dict[str, Any]:
    if peer == "gateway":
        return {"url": f"{stack.url}/{NOOP_QUEUE}/status?uuid={job_id}", "authorization": f"Bearer {stack.token(sub)}"}
    return {"url": f"{stack.flower_url}/api/task/result/{job_id}"}


def _submit_one(stack: BenchStack, sub: str, **params: Any) -> str:
    answer = stack.session.post(f"{stack.url}/{NOOP_QUEUE}/process", headers=stack.headers(sub), timeout=30,
                                json={"doc_url": stack.doc_url(), "params": params})
    answer.raise_for_status()
    return answer.json()["uuid"]


def _status(stack: BenchStack, sub: str, job_id: str) -> dict[str, Any]:
    answer = stack.session.get(f"{stack.url}/{NOOP_QUEUE}/status", params={"uuid": job_id},
                               headers=stack.headers(sub), timeout=30)
    answer.raise_for_status()
    return answer.json()


def b2_status(stack: BenchStack, q: Quick, profile_dir: Path | None = None) -> dict[str, Any]:
    """B2: status of a finished and of a running job, gateway vs Flower's task result."""
    sub = "bench-b2"
    stack.add_consumer(NOOP_QUEUE)
    finished = _submit_one(stack, sub)
    wait_for(lambda: _status(stack, sub, finished)["status"] == "SUCCESS", 60, "the finished job", 0.05)
    running = _submit_one(stack, sub, sleep_s=3600)
    wait_for(lambda: _status(stack, sub, running)["status"] == "PROGRESS", 60, "the running job", 0.05)
    out: dict[str, Any] = {}
    try:
        for kind, job_id in (("finished", finished), ("running", running)):
            bodies = {"gateway": _status(stack, sub, job_id),
                      "flower": stack.session.get(f"{stack.flower_url}/api/task/result/{job_id}", timeout=30).json()}
            for peer in ("gateway", "flower") if q.warmup_s else ():
                run_wrk(**_status_request(stack, peer, job_id, sub), seconds=q.warmup_s, connections=CONNECTIONS)
            runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "flower": []}
            for i in range(q.repeat):
                for peer in ("gateway", "flower") if i % 2 == 0 else ("flower", "gateway"):
                    sessions = stack.pg_sessions()
                    meter = CpuMeter().start()
                    report = run_wrk(**_status_request(stack, peer, job_id, sub), seconds=q.load_s,
                                     connections=CONNECTIONS)
                    report["cpu_s"] = meter.stop()
                    _evidence(stack, report, peer, sessions)
                    report.pop("ids")
                    report["lost"] = 0
                    runs[peer].append(report)
                    print(f"B2 {kind:8s} {peer:8s} run {i + 1}: {report['rate']:7.1f} req/s, "
                          f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, non-2xx "
                          f"{report['requests'] - report['ok']}", file=sys.stderr)
            out[kind] = _pair(runs)
            out[kind]["bodies"] = {peer: {k: body.get(k) for k in ("status", "state", "progress")
                                          if k in body} for peer, body in bodies.items()}
            if profile_dir is not None:
                out[kind]["profile"] = profile(stack, profile_dir / f"b2-status-{kind}",
                                               _status_request(stack, "gateway", job_id, sub), q.load_s)
    finally:
        stack.session.delete(f"{stack.url}/jobs/{running}", headers=stack.headers(sub), timeout=30)
    return out


# -- profiling ----------------------------------------------------------------------------------
def profile(stack: BenchStack, prefix: Path, request: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Load the gateway with wrk while py-spy records every gunicorn process; summarize the samples."""
    out: dict[str, Any] = {}
    for mode in ("gil", "wall"):
        with PySpy(stack.gunicorn_workers(), prefix, mode, seconds) as spy:
            report = run_wrk(**request, seconds=seconds, connections=CONNECTIONS)
        out[mode] = {"rate": round(report["rate"], 1), "files": [str(f) for f in spy.files],
                     "top": top_frames(spy.files, within="ThreadWorker.handle ")}
    prefix.with_name(prefix.name + "-summary.json").write_text(json.dumps(out, indent=2))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat (smoke run)")
    parser.add_argument("--profile", metavar="DIR", help="also profile the gateway with py-spy into DIR")
    args = parser.parse_args()
    q = Quick(args.quick)
    profile_dir = Path(args.profile).resolve() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="sg-bench-http-") as tmp:
        with production_stack(Path(tmp), worker_queues=_queues_but_noop()) as stack:
            result = {"B1": b1_submit(stack, q, profile_dir), "B2": b2_status(stack, q, profile_dir)}
    print(json.dumps(result, indent=2, default=str))
    return 0


def _queues_but_noop() -> list[str]:
    from benchmarks.harness import base_env
    from service_gateway.runtime import Runtime
    from service_gateway.settings import load_settings
    env = base_env(Path(tempfile.gettempdir()))
    return [q for q in Runtime(load_settings(environ=env)).queues if q != NOOP_QUEUE]


if __name__ == "__main__":
    sys.exit(main())
