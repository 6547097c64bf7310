#!/usr/bin/env python3
"""Accuracy of the annotators against generated ground truth: a table for docs/annotations.md.

    .venv/bin/python benchmarks/accuracy.py [service ...]

Each service runs in-process on its truth clip (the same clips and bars as the tests, see
tests/truth/), and the table lists every measured figure against its bar.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.truth import MODULES, load  # noqa: E402
from workers.sdk.local import run_order  # noqa: E402


def main(services: list[str]) -> int:
    rows, ok = [], True
    with tempfile.TemporaryDirectory(prefix="sg-accuracy-") as tmp:
        os.environ["SG_DATA_DIR"] = str(Path(tmp) / "data")     # outputs (thumbnails) stay in the temp dir
        for name in services or MODULES:
            truth = load(name)
            directory = Path(tmp) / name
            directory.mkdir()
            case = truth.make(directory)
            started = time.monotonic()
            sink = run_order({"service": truth.SERVICE, "file": str(case.path), "params": case.params})
            wall = time.monotonic() - started
            if sink.result is None:
                rows.append((name, "job", f"FAILED {sink.error}", "SUCCESS", "no"))
                ok = False
                continue
            for check in truth.score(sink.result, case):
                rows.append((name, check.name, str(check.value), check.bar, "yes" if check.ok else "no"))
                ok &= check.ok
            rows.append((name, "wall time (s)", f"{wall:.2f}", "-", "-"))
    print("| service | figure | measured | bar | met |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
