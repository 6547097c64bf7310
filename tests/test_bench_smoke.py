"""The benchmark suite's smoke run (`make bench BENCH_QUICK=1`): it runs and writes issue #8's table.

Only that it ran and produced the eight rows is checked: speed targets live in docs/benchmarks.md,
never as timed assertions in the tests.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.stack import port_open

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def test_the_quick_benchmark_run_writes_all_eight_rows(tmp_path):
    for name, port in (("RabbitMQ", 5672), ("Redis", 6379), ("PostgreSQL", 5432)):
        need(port_open("127.0.0.1", port), f"{name} on 127.0.0.1:{port}")
    for tool in ("wrk", "ffmpeg", "rabbitmqctl"):
        need(bool(shutil.which(tool)), tool)
    output, figures = tmp_path / "benchmarks.md", tmp_path / "results.json"
    # Given a docs file with a hand-written section, when the smoke run writes its section into it ...
    output.write_text("# Benchmarks\n\nIntro.\n\n## Hand-written\n\nKept.\n")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--output", str(output),
                          "--json", str(figures)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    # ... then the table has one row per figure, and the hand-written section survives.
    text = output.read_text()
    assert re.findall(r"^\| (B\d) \|", text, re.M) == [f"B{i}" for i in range(1, 9)]
    assert "## Hand-written\n\nKept." in text and text.index("Intro.") < text.index("| B1 |")
    assert json.loads(figures.read_text())["errors"] == {}
