"""`sg run-order` and the SDK's local executor: real ffmpeg, no broker."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

from service_gateway.settings import load_settings
from tests.test_e2e_jobs import ffmpeg_children
from workers.sdk.local import run_order


def test_sg_run_order_prints_progress_and_the_result(media, tmp_path):
    order = tmp_path / "order.json"
    order.write_text(json.dumps({"service": "probe", "file": str(media / "short.mp4")}))
    done = subprocess.run([sys.executable, "-m", "service_gateway.cli", "run-order", str(order)],
                          capture_output=True, text=True, timeout=60,
                          env={"SG_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["service"] == "probe" and abs(result["duration"] - 4.0) < 0.1
    assert "SUCCESS" in done.stderr


def test_sg_run_order_reports_a_failed_job_and_exits_1(media, tmp_path):
    order = tmp_path / "order.json"
    order.write_text(json.dumps({"service": "transcode", "file": str(media / "notes.txt")}))
    done = subprocess.run([sys.executable, "-m", "service_gateway.cli", "run-order", str(order)],
                          capture_output=True, text=True, timeout=60,
                          env={"SG_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == 305


def test_a_job_past_its_time_limit_fails_with_108_and_its_ffmpeg_is_stopped(media, tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), "time_limits": "transcode=1",
                              "cancel_poll_interval_s": 0.2})
    job_id = str(uuid.uuid4())
    sink = run_order({"service": "transcode", "file": str(media / "medium.mp4"), "job_id": job_id,
                      "params": {"preset": "webm-vp9", "speed": "slow"}}, settings=settings)
    assert sink.result is None and sink.error is not None
    assert sink.error.code == 108 and "time limit of 1 s" in sink.error.message
    assert sink.progress and max(sink.progress) < 100      # it was really running when stopped
    assert not ffmpeg_children(job_id)
