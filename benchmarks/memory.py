#!/usr/bin/env python3
"""Peak memory of each annotator on a short and a 10x longer 720p clip: it must stay flat.

    .venv/bin/python benchmarks/memory.py [--quick] [--repeat 3] [service ...]

Each run is `sg run-order` in a fresh process (the worker's Python, as a Celery pool child
would run it); its RSS and the RSS of its children (ffmpeg) are sampled every 20 ms. The
table gives the median over the repeats of the Python process's peak, the children's peak,
and the ratio long/short (target: <= 1.2). --quick uses 10 s and 60 s clips instead of
1 min and 10 min (a smoke run for CI).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("transitions", "loudness", "speech", "faces", "thumbnails")
TARGET_RATIO = 1.2


def make_clip(path: Path, seconds: int) -> None:
    """A 720p clip with moving video and a tone, encoded fast (content does not matter for memory)."""
    if path.exists():
        return
    tmp = path.with_suffix(".part.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=300:sample_rate=48000:duration={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(tmp)], check=True)
    tmp.replace(path)


def measure(service: str, clip: Path, work: Path) -> tuple[float, float, float, bool]:
    """Run one order; return (python peak MiB, children peak MiB, wall s, succeeded)."""
    order = work / f"{service}-{clip.stem}.json"
    order.write_text(json.dumps({"service": service, "file": str(clip)}))
    env = {**os.environ, "SG_DATA_DIR": str(work / "data"), "SG_LOG_LEVEL": "WARNING"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "service_gateway.cli", "run-order", str(order),
                             "-o", str(work / "result.json")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peaks[0] = max(peaks[0], parent.memory_info().rss)
                children = 0
                for child in parent.children(recursive=True):
                    try:
                        children += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peaks[1] = max(peaks[1], children)
            except psutil.NoSuchProcess:
                return
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    stop.set()
    sampler.join()
    return peaks[0] / 2**20, peaks[1] / 2**20, time.monotonic() - started, code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", default=list(SERVICES))
    parser.add_argument("--quick", action="store_true", help="10 s vs 60 s clips (smoke run)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--media-dir", default=str(ROOT / "var" / "bench-media"))
    args = parser.parse_args()

    short_s, long_s = (10, 60) if args.quick else (60, 600)
    media = Path(args.media_dir)
    media.mkdir(parents=True, exist_ok=True)
    short, long = media / f"clip-{short_s}s-720p.mp4", media / f"clip-{long_s}s-720p.mp4"
    print(f"making clips ({short_s} s and {long_s} s, 720p) ...", file=sys.stderr, flush=True)
    make_clip(short, short_s)
    make_clip(long, long_s)

    rows, all_ok = [], True
    with tempfile.TemporaryDirectory(prefix="sg-bench-mem-") as tmp:
        work = Path(tmp)
        for service in args.services:
            figures = {}
            for clip in (short, long):
                runs = [measure(service, clip, work) for _ in range(args.repeat)]
                if not all(ok for *_, ok in runs):
                    print(f"{service} failed on {clip.name}", file=sys.stderr)
                    all_ok = False
                figures[clip] = runs
                print(f"{service} {clip.name}: " + ", ".join(f"{p:.0f}+{c:.0f} MiB {w:.1f}s" for p, c, w, _ in runs),
                      file=sys.stderr, flush=True)
            py = {c: statistics.median(r[0] for r in runs) for c, runs in figures.items()}
            ch = {c: statistics.median(r[1] for r in runs) for c, runs in figures.items()}
            wall = {c: statistics.median(r[2] for r in runs) for c, runs in figures.items()}
            spread = max(r[0] for r in figures[long]) - min(r[0] for r in figures[long])
            ratio = py[long] / py[short]
            met = ratio <= TARGET_RATIO
            all_ok &= met
            rows.append(f"| {service} | {py[short]:.0f} | {py[long]:.0f} (±{spread / 2:.0f}) | {ratio:.2f} | "
                        f"{ch[short]:.0f} / {ch[long]:.0f} | {wall[short]:.1f} / {wall[long]:.1f} | "
                        f"{'met' if met else 'NOT met'} |")
    print(f"\nPeak RSS in MiB, median of {args.repeat} runs; clips of {short_s} s and {long_s} s at 720p.\n")
    print(f"| service | worker peak, {short_s} s | worker peak, {long_s} s | ratio (target <= {TARGET_RATIO}) "
          f"| ffmpeg peak, short / long | wall s, short / long | target |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
