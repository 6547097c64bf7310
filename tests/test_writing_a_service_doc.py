"""The example in docs/writing-a-service.md is real code: it runs in the SDK executor and finds what it should."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from service_gateway.settings import load_settings
from tests.conftest import ffmpeg
from workers.sdk.local import run_order

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def volume_module(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "writing-a-service.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    package = tmp_path / "docexample"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "volume.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "docexample.volume"
    for name in [m for m in sys.modules if m.startswith("docexample")]:
        del sys.modules[name]


def test_the_documented_volume_service_runs_and_finds_the_loud_second(volume_module, media, tmp_path):
    # 4 s: a quiet tone (-38 dBFS) and, from 2 s to 2.9 s, a loud one (-8.5 dBFS)
    clip = tmp_path / "loud.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=4",
           "-af", "volume=enable='between(t,2,2.9)':volume=30,volume=0.1", str(clip))
    settings = load_settings({"data_dir": str(tmp_path / "data"), "service_modules": volume_module})
    sink = run_order({"service": "volume", "file": str(clip), "params": {"loud_db": -12}}, settings=settings)
    assert sink.error is None, sink.error
    result = sink.result
    assert result["service"] == "volume" and abs(result["duration"] - 4.0) < 0.05
    assert [(a["start"], a["label"]) for a in result["annotations"]] == [(2.0, "loud")]
    assert result["summary"]["max_volume_db"] > result["summary"]["mean_volume_db"]
