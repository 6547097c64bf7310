"""Measuring helpers shared by the benchmarks: wrk runs, statistics, CPU and RSS sampling."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "request.lua"
#: Lua patterns of the id in a 2xx answer: the gateway's {"uuid": ...}, Flower's {"task-id": ...}.
UUID_PATTERN = '"uuid":%s*"([%w%-]+)"'
FLOWER_ID_PATTERN = '"task%-id":%s*"([%w%-]+)"'


@dataclass
class Quick:
    """Sizes of one suite run: the full run of `make bench`, or the smoke run of BENCH_QUICK=1."""

    quick: bool = False

    @property
    def repeat(self) -> int:
        return 1 if self.quick else 3

    @property
    def load_s(self) -> int:           # one wrk run of B1/B2 (wrk takes whole seconds)
        return 1 if self.quick else 10

    @property
    def warmup_s(self) -> int:         # 0 = no warm-up run
        return 0 if self.quick else 3

    @property
    def list_s(self) -> int:           # one sequential wrk run of B8
        return 1 if self.quick else 5

    @property
    def overhead_repeat(self) -> int:  # B5/B6: seconds-long jobs vary ±10 % run to run on a shared machine
        return 1 if self.quick else 5

    @property
    def dispatch_jobs(self) -> int:    # sequential jobs per B3 run and peer
        return 10 if self.quick else 200

    @property
    def throughput_jobs(self) -> int:  # jobs per B4 run and peer
        return 60 if self.quick else 2000


# -- statistics ---------------------------------------------------------------------------------
def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0-100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100 * (len(ordered) - 1)))))]


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max) of per-run figures."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "runs": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def fmt(stat: dict[str, float], digits: int = 0, unit: str = "") -> str:
    """``median (min-max)`` of a :func:`summary`, one run shown alone."""
    med, lo, hi = stat["median"], stat["min"], stat["max"]
    if stat.get("runs", 0) <= 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


# -- wrk ----------------------------------------------------------------------------------------
def wrk_binary() -> str:
    path = shutil.which("wrk")
    if not path:
        raise RuntimeError("wrk is not installed (`apt-get install -y wrk`; `make bench` does it)")
    return path


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run_wrk(url: str, *, seconds: float, connections: int = 16, threads: int = 2, method: str = "GET",
            body: str = "", content_type: str = "", authorization: str = "", id_pattern: str = "") -> dict[str, Any]:
    """Run wrk with benchmarks/wrk/request.lua for ``seconds``; return its JSON report plus the 2xx ids.

    The report has requests, duration_us, statuses, errors and latency_us percentiles; added here:
    ``rate`` (answers/s), ``ok`` (2xx answers), ``ids`` (ids parsed from 2xx bodies) and the
    exact command.
    """
    with tempfile.TemporaryDirectory(prefix="sg-wrk-") as tmp:
        out = Path(tmp) / "report.json"
        env = {**os.environ, "WRK_METHOD": method, "WRK_BODY": body, "WRK_CONTENT_TYPE": content_type,
               "WRK_AUTHORIZATION": authorization, "WRK_ID_PATTERN": id_pattern, "WRK_OUT": str(out)}
        args = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
                "-s", str(WRK_SCRIPT), url]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 120)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        report = json.loads(out.read_text())
        ids_path = Path(str(out) + ".ids")
        report["ids"] = ids_path.read_text().split() if ids_path.exists() else []
    report["ok"] = sum(n for status, n in report["statuses"].items() if status.startswith("2"))
    report["rate"] = report["requests"] / (report["duration_us"] / 1e6)
    report["ok_rate"] = report["ok"] / (report["duration_us"] / 1e6)
    report["p50_ms"] = report["latency_us"]["p50"] / 1000
    report["p99_ms"] = report["latency_us"]["p99"] / 1000
    shown = [str(WRK_SCRIPT.relative_to(WRK_SCRIPT.parents[2])) if a == str(WRK_SCRIPT) else a for a in args[1:-1]]
    report["command"] = " ".join(["wrk", *shown, _shown_url(url)])
    return report


def _shown_url(url: str) -> str:
    shown = "http://127.0.0.1:PORT/" + url.split("/", 3)[3]
    return f"'{shown}'" if "?" in shown or "&" in shown else shown


# -- processes ----------------------------------------------------------------------------------
#: Which processes count as what in CPU accounting.
GROUPS: dict[str, Callable[[psutil.Process], bool]] = {
    "gateway (gunicorn)": lambda p: "gunicorn" in " ".join(p.cmdline()[:3]),
    "worker (celery -A workers)": lambda p: _celery(p, "workers")
    and "flower" not in p.cmdline(),
    "raw worker": lambda p: _celery(p, "benchmarks.raw_celery"),
    "flower": lambda p: _celery(p, "benchmarks.flower_app"),
    "postgresql": lambda p: p.name().startswith("postgres"),
    "rabbitmq": lambda p: p.name() in ("beam.smp", "erl_child_setup", "epmd"),
    "redis": lambda p: p.name().startswith("redis-server"),
    "wrk": lambda p: p.name() == "wrk",
    "ffmpeg": lambda p: p.name() in ("ffmpeg", "ffprobe"),
}


def _celery(p: psutil.Process, app: str) -> bool:
    cmd = p.cmdline()
    return any(part.endswith("celery") for part in cmd[:2]) and app in cmd


class CpuMeter:
    """CPU seconds used by each process group between :meth:`start` and :meth:`stop`.

    Processes that start or end in between count from when they were first or last seen (sampled
    every 0.5 s), which is exact for the long-lived ones that matter here.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._first: dict[int, tuple[str, float]] = {}
        self._last: dict[int, float] = {}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.total_s = 0.0

    def _sample(self) -> None:
        for proc in psutil.process_iter():
            try:
                times = proc.cpu_times()
                used = times.user + times.system
                if proc.pid not in self._first:
                    group = "bench driver" if proc.pid == os.getpid() else next(
                        (name for name, test in GROUPS.items() if test(proc)), "")
                    self._first[proc.pid] = (group, used)
                self._last[proc.pid] = used
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def start(self) -> "CpuMeter":
        self._t0 = psutil.cpu_times()
        self._sample()

        def loop() -> None:
            while not self._halt.wait(self.interval_s):
                self._sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._halt.set()
        if self._thread:
            self._thread.join()
        self._sample()
        t1 = psutil.cpu_times()
        busy = lambda t: t.user + t.system + t.nice + getattr(t, "irq", 0) + getattr(t, "softirq", 0)  # noqa: E731
        self.total_s = busy(t1) - busy(self._t0)
        used: dict[str, float] = {}
        for pid, (group, first) in self._first.items():
            name = group or "other processes (other users' tests too)"
            used[name] = used.get(name, 0.0) + self._last.get(pid, first) - first
        used["machine total"] = self.total_s
        return {k: round(v, 2) for k, v in sorted(used.items(), key=lambda kv: -kv[1])}


class RssSampler:
    """Peak RSS of each given process (MiB), sampled every ``interval_s`` while running."""

    def __init__(self, pids: list[int], interval_s: float = 0.2) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak: dict[int, float] = {pid: 0.0 for pid in pids}
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        procs = {pid: psutil.Process(pid) for pid in self.pids}
        while True:
            for pid, proc in procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass
            if self._halt.wait(self.interval_s):
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._halt.set()
        self._thread.join()


# -- profiling ----------------------------------------------------------------------------------
class PySpy:
    """``py-spy record --format raw`` of some processes while the block runs (it must last ``seconds``).

    Modes: ``gil`` samples only the thread holding the GIL (where Python CPU goes); ``wall`` samples
    every thread, waiting or not (``--idle``: where a request's or a job's time goes).
    """

    def __init__(self, pids: list[int], prefix: Path, mode: str, seconds: float) -> None:
        self.pids, self.prefix, self.mode, self.seconds = pids, prefix, mode, seconds
        self.procs: list[tuple[Path, subprocess.Popen]] = []

    def __enter__(self) -> "PySpy":
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        pyspy = str(Path(sys.executable).parent / "py-spy")
        extra = {"gil": ["--gil"], "wall": ["--idle"]}[self.mode]
        for pid in self.pids:
            raw = self.prefix.with_name(f"{self.prefix.name}-{self.mode}-{pid}.txt")
            self.procs.append((raw, subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--threads",
                 "--nonblocking", "--duration", str(int(self.seconds) + 1), "-o", str(raw), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: Any) -> None:
        for _, proc in self.procs:
            proc.wait(timeout=120)

    @property
    def files(self) -> list[Path]:
        return [raw for raw, _ in self.procs if raw.exists()]


def top_frames(files: list[Path], within: str, limit: int = 60) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) over the samples of py-spy raw (collapsed-stack) files.

    Only samples with a ``within`` frame on the stack count (a thread serving a request, a pool
    process running a job), so the percentages say where that work's time goes.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit() or within not in stack:
                continue
            n = int(count)
            total += n
            frames = [_function(f) for f in stack.split(";") if f and not f.startswith(("thread ", "process "))]
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + n
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return []
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:limit]
    return [(frame, round(100 * n / total, 1), round(100 * own.get(frame, 0) / total, 1)) for frame, n in ranked]


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``: the lines of one function add up."""
    return re.sub(r":\d+\)$", ")", frame)
