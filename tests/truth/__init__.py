"""Ground truth for the annotators: media generated with known answers, and how to score a result.

One module per service (``tests/truth/<service>.py``) defines:

* ``SERVICE``: the service name;
* ``make(directory) -> Case``: generate the media (ffmpeg lavfi, espeak-ng, a packaged photo;
  nothing downloaded) into ``directory`` and return it with its truth and the params to use;
* ``score(result, case) -> list[Check]``: compare a SUCCESS result with the truth.

The tests (real worker, real broker) and ``benchmarks/accuracy.py`` (the table in
docs/annotations.md) both use these, so the bars in the docs are the bars the tests hold.
"""
from __future__ import annotations

import importlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The truth modules, in the order of the accuracy table.
MODULES = ("transitions", "loudness", "speech", "faces", "thumbnails")


@dataclass
class Case:
    """A generated document, what is known about it, and the parameters to submit with."""

    path: Path
    truth: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Check:
    """One measured figure against its bar, e.g. ("cut time error (frames)", 0, "<= 1", True)."""

    name: str
    value: Any
    bar: str
    ok: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.value} (bar {self.bar}) {'ok' if self.ok else 'FAILED'}"


def load(service: str):
    return importlib.import_module(f"tests.truth.{service}")


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly (argument list, no shell); raise on failure."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time segments."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def failed(checks: list[Check]) -> list[str]:
    """The checks that missed their bar, as lines for an assertion message."""
    return [str(c) for c in checks if not c.ok]


def speak(text: str, directory: Path, name: str, rate: int = 48000) -> tuple[Path, float]:
    """An espeak-ng utterance as mono WAV at ``rate``, its leading and trailing silence cut away.

    Returns the file and its duration: the truth of where speech is, once placed at an offset.
    """
    raw = directory / f"{name}-raw.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    out = directory / f"{name}.wav"
    trim = "silenceremove=start_periods=1:start_threshold=-45dB"
    ffmpeg("-i", str(raw), "-af", f"{trim},areverse,{trim},areverse", "-ac", "1", "-ar", str(rate), str(out))
    return out, duration_of(out)


def duration_of(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())
