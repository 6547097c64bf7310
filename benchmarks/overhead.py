#!/usr/bin/env python3
"""B5 transcode and B6 annotator overhead: a job through the gateway vs the same work run directly.

    .venv/bin/python benchmarks/overhead.py [--quick] [service ...]

Through the gateway: ``POST /<svc>/annotate`` with a file:// doc_url, and the time until the
client sees SUCCESS (Celery's result-backend notification, no polling), on the production stack
(worker: ``celery -A workers worker -c 2``). Directly, on the same file:

- transcode (B5): the very ffmpeg command the worker runs (``workers.services.transcode.ffmpeg_args``
  for the default preset, mp4-720p at speed veryfast), as a subprocess;
- transitions, faces, speech, loudness (B6): the service's own function called by the SDK's local
  runner (``workers.sdk.local.run_order``, what `sg run-order` does): the same ffmpeg decode and
  OpenCV / webrtcvad / ebur128 code, with no gateway, broker, job store or backend.

The direct runs happen in a child process of their own (``--serve-direct``), kept warm across
runs like a worker's pool process, so the benchmark's own threads never share its interpreter.

Each service is warmed first (imports, caches) on a tiny clip, both ways; then each repeat runs
each service once each way, the order alternating between repeats (5 repeats: these jobs vary by
±10 % from run to run on a shared machine). The clip: 60 s of 720p (testsrc2 and a tone), or 4 s
of 320x240 with --quick. Besides the ratio, the fixed cost of a job (gateway - direct, paired) is
given; speech and loudness take well under a second on 60 s, so they are also run on the 600 s
clip (supplementary, not the B6 figure).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import MEDIA_DIR, BenchStack, make_clip, production_stack  # noqa: E402
from benchmarks.measure import CpuMeter, Quick, summary  # noqa: E402

SERVICES = ("transcode", "transitions", "faces", "speech", "loudness")
JOB_TIMEOUT_S = 1800


def clip_for(q: Quick) -> Path:
    if q.quick:
        return make_clip(MEDIA_DIR / "clip-4s-240p.mp4", 4, "320x240")
    return make_clip(MEDIA_DIR / "clip-60s-720p.mp4", 60)


def _submit(stack: BenchStack, service: str, clip: Path, sub: str) -> str:
    answer = stack.session.post(f"{stack.url}/{service}/annotate", headers=stack.headers(sub), timeout=30,
                                data={"doc_url": stack.doc_url(clip)})
    if answer.status_code != 202:
        raise RuntimeError(f"{service}: submit answered {answer.status_code}: {answer.text[:200]}")
    return answer.json()["uuid"]


def through_gateway(stack: BenchStack, service: str, clip: Path) -> float:
    """Wall seconds from sending the submit to the client learning of SUCCESS."""
    started = time.monotonic()
    job_id = _submit(stack, service, clip, "bench-overhead")
    result = stack.celery.AsyncResult(job_id)
    value = result.get(timeout=JOB_TIMEOUT_S, interval=0.01, propagate=False)
    elapsed = time.monotonic() - started
    if result.state != "SUCCESS":
        raise RuntimeError(f"{service} job {job_id} ended {result.state}: {value}")
    return elapsed


def direct(service: str, clip: Path, work: Path) -> float:
    """Wall seconds of the same work run directly (see the module docstring)."""
    from service_gateway.settings import load_settings
    if service == "transcode":
        from workers.services import transcode
        settings = transcode.resolve(transcode.service.validate({}))
        dest = work / "direct-transcoded.mp4"
        args = transcode.ffmpeg_args(str(clip), str(dest), settings)
        started = time.monotonic()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        dest.unlink(missing_ok=True)
        return elapsed
    from workers.sdk.local import run_order
    settings = load_settings(environ={"SG_DATA_DIR": str(work / "direct-data"), "SG_LOG_LEVEL": "WARNING"})
    started = time.monotonic()
    sink = run_order({"service": service, "file": str(clip)}, settings=settings)
    elapsed = time.monotonic() - started
    if sink.result is None:
        raise RuntimeError(f"{service} direct run failed: {sink.error}")
    return elapsed


class DirectRunner:
    """A long-lived child process that runs :func:`direct` on request and answers the wall time."""

    def __init__(self, work: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-direct", str(work)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def run(self, service: str, clip: Path) -> float:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps([service, str(clip)]) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "direct runner died"}')
        if "error" in answer:
            raise RuntimeError(f"{service} direct run: {answer['error']}")
        return answer["elapsed"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve_direct(work: Path) -> int:
    """The child side of :class:`DirectRunner`: one JSON request per line on stdin."""
    import logging
    logging.disable(logging.WARNING)
    out = sys.stdout
    sys.stdout = sys.stderr                       # nothing but answers on the pipe
    for line in sys.stdin:
        service, clip = json.loads(line)
        try:
            answer = {"elapsed": direct(service, Path(clip), work)}
        except Exception as exc:
            answer = {"error": f"{exc.__class__.__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def transcode_command(clip: Path) -> str:
    from workers.services import transcode
    shown = str(clip.relative_to(ROOT)) if clip.is_relative_to(ROOT) else str(clip)
    args = transcode.ffmpeg_args(shown, "OUT.mp4", transcode.resolve(transcode.service.validate({})))
    return " ".join(["ffmpeg", *args[1:]])


def b5_b6_overhead(stack: BenchStack, q: Quick, work: Path, services: tuple[str, ...] = SERVICES,
                   warm: bool = True) -> dict[str, Any]:
    """B5 and B6: gateway submit -> SUCCESS vs the same work run directly, per service."""
    clip = clip_for(q)
    tiny = stack.tiny
    runner = DirectRunner(work)
    try:
        for service in services if warm else ():  # warm: imports in the runner and in both pool processes
            runner.run(service, tiny)
            ids = [_submit(stack, service, tiny, "bench-warmup") for _ in range(2)]
            for job_id in ids:
                stack.celery.AsyncResult(job_id).get(timeout=JOB_TIMEOUT_S, interval=0.01, propagate=False)
        runs = _pairs(stack, runner, services, clip, q.overhead_repeat)
        long_clip = None if q.quick else make_clip(MEDIA_DIR / "clip-600s-720p.mp4", 600)
        short_jobs = tuple(s for s in ("speech", "loudness") if s in services)
        long_runs = _pairs(stack, runner, short_jobs, long_clip, q.repeat) if long_clip and short_jobs else {}
    finally:
        runner.close()
    out: dict[str, Any] = {"clip": {"name": clip.name, "seconds": 4 if q.quick else 60},
                           "transcode_command": transcode_command(clip), "repeat": q.overhead_repeat}
    for service, items in runs.items():
        out[service] = _figures(items)
    if long_runs:
        out["long_clip"] = {"name": long_clip.name, "seconds": 600,
                            **{service: _figures(items) for service, items in long_runs.items()}}
    return out


def _pairs(stack: BenchStack, runner: "DirectRunner", services: tuple[str, ...], clip: Path,
           repeat: int) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in services}
    for i in range(repeat):
        for service in services:
            figures: dict[str, Any] = {}
            meter = CpuMeter().start()
            for way in ("gateway", "direct") if i % 2 == 0 else ("direct", "gateway"):
                figures[way] = through_gateway(stack, service, clip) if way == "gateway" else runner.run(service, clip)
            figures["cpu_s"] = meter.stop()
            figures["ratio"] = figures["gateway"] / figures["direct"]
            figures["extra_ms"] = 1000 * (figures["gateway"] - figures["direct"])
            runs[service].append(figures)
            print(f"B5/B6 {service:11s} {clip.name} run {i + 1}: gateway {figures['gateway']:.2f} s, direct "
                  f"{figures['direct']:.2f} s, ratio {figures['ratio']:.3f}", file=sys.stderr)
    return runs


def _figures(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {key: summary([r[key] for r in items]) for key in ("gateway", "direct", "ratio", "extra_ms")}
    out["runs"] = items
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", default=list(SERVICES))
    parser.add_argument("--quick", action="store_true", help="a 4 s clip, one repeat (smoke run)")
    parser.add_argument("--serve-direct", metavar="WORK_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_direct:
        return serve_direct(Path(args.serve_direct))
    q = Quick(args.quick)
    with tempfile.TemporaryDirectory(prefix="sg-bench-overhead-") as tmp:
        with production_stack(Path(tmp), flower=False, raw=False) as stack:
            result = b5_b6_overhead(stack, q, Path(tmp), tuple(args.services))
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
