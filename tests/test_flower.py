"""Flower on the real RabbitMQ: never open by mistake, basic auth on, our workers, tasks and PROGRESS."""
from __future__ import annotations

import json
import signal
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest
import requests

from tests.stack import BIN, free_port, port_open, wait_for

pytestmark = pytest.mark.e2e


def flower_env(stack, **extra: str) -> dict[str, str]:
    """The stack's settings without any Flower option of the caller's shell, plus ``extra``."""
    return {**{k: v for k, v in stack.env.items() if not k.startswith("FLOWER_")}, **extra}


def flower_argv(port: int) -> list[str]:
    return [str(BIN / "celery"), "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"]


@contextmanager
def running_flower(stack, env: dict[str, str]) -> Iterator[str]:
    """`celery -A workers flower` on a free port with ``env``; yields its base URL once it listens."""
    port = free_port()
    with open(stack.work_dir / "flower.log", "ab") as log:
        proc = subprocess.Popen(flower_argv(port), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            def listening() -> bool:
                assert proc.poll() is None, f"Flower exited with {proc.returncode}: {stack.tail('flower.log')}"
                return port_open("127.0.0.1", port)
            wait_for(listening, 60, "Flower to listen")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


@pytest.fixture
def flower(stack):
    if stack.name != "rabbitmq":
        pytest.skip("the embedded broker has no fanout: no worker events, so Flower has no live data there")
    auth = ("ops", "flower-test-password")
    with running_flower(stack, flower_env(stack, FLOWER_BASIC_AUTH=":".join(auth))) as base:
        yield base, auth


@pytest.mark.parametrize("auth", [None, "ops", "ops:"], ids=["no-auth", "no-password", "empty-password"])
def test_flower_refuses_to_start_without_auth_and_says_what_to_set(stack, auth):
    env = flower_env(stack, **({"FLOWER_BASIC_AUTH": auth} if auth is not None else {}))
    port = free_port()
    done = subprocess.run(flower_argv(port), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "refusing to start without auth" in x]
    assert "set FLOWER_BASIC_AUTH=user:password" in line and "SG_FLOWER_ALLOW_OPEN=true" in line
    assert not port_open("127.0.0.1", port)


def test_an_open_flower_needs_the_explicit_opt_in(stack):
    with running_flower(stack, flower_env(stack, SG_FLOWER_ALLOW_OPEN="true")) as base:
        assert requests.get(f"{base}/workers", timeout=30).status_code == 200     # no password asked


def test_flower_needs_its_password_and_shows_our_progress(stack, flower, media):
    base, auth = flower
    assert requests.get(f"{base}/api/workers", timeout=30).status_code == 401
    assert requests.get(f"{base}/workers", timeout=30).status_code == 401
    assert requests.get(f"{base}/api/workers", auth=(auth[0], "wrong"), timeout=30).status_code == 401
    assert requests.get(f"{base}/workers", auth=auth, timeout=30).status_code == 200
    assert requests.get(f"{base}/api/workers", auth=auth, timeout=30).status_code == 200
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
