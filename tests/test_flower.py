"""Flower on the real RabbitMQ: basic auth on, our workers and tasks visible, PROGRESS with its value."""
from __future__ import annotations

import json
import signal
import subprocess

import pytest
import requests

from tests.stack import BIN, free_port, port_open, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def flower(stack):
    if stack.name != "rabbitmq":
        pytest.skip("the embedded broker has no fanout: no worker events, so Flower has no live data there")
    port = free_port()
    auth = ("ops", "flower-test-password")
    log = open(stack.work_dir / "flower.log", "ab")
    proc = subprocess.Popen([str(BIN / "celery"), "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"],
                            env={**stack.env, "FLOWER_BASIC_AUTH": ":".join(auth)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 60, "Flower to listen")
        yield f"http://127.0.0.1:{port}", auth
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_flower_needs_its_password_and_shows_our_progress(stack, flower, media):
    base, auth = flower
    assert requests.get(f"{base}/api/workers", timeout=30).status_code == 401
    wait_for(lambda: requests.get(f"{base}/api/workers", auth=auth, timeout=30).json(), 60, "workers in Flower")
    job_id = stack.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="medium")

    def progress_seen():
        answer = requests.get(f"{base}/api/task/info/{job_id}", auth=auth, timeout=30)
        if answer.status_code != 200:
            return None
        task = answer.json()
        return task if task.get("state") == "PROGRESS" and task.get("result") else None
    task = wait_for(progress_seen, 60, "Flower to show the task in PROGRESS", interval_s=0.2)
    running = json.loads(task["result"])
    assert running["total"] == 100 and 0 <= running["current"] < 100 and running["type"] == "transcode"
    assert task["name"] == "sg.transcode"
    stack.wait_status("transcode", job_id, {"SUCCESS"}, timeout_s=180)
    wait_for(lambda: requests.get(f"{base}/api/task/info/{job_id}", auth=auth, timeout=30).json().get("state")
             == "SUCCESS", 30, "Flower to show SUCCESS")
