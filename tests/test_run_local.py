"""`python run_local.py` (what `make run` runs): the banner's commands work as printed, Flower, Ctrl-C stops all."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests

from tests.conftest import JWT_SECRET, need
from tests.stack import (drop_postgres_database, drop_rabbitmq_vhost, free_port, port_open, postgres_database,
                         rabbitmq_vhost, wait_for)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@contextmanager
def run_local(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[tuple[str, list[str]]]:
    """`python run_local.py` with ``args`` until its banner is out; yields (banner, lines), then Ctrl-C.

    On leaving, it must stop with code 0 and leave no child process behind.
    """
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--data-dir", str(tmp_path / "var"),
                             "--concurrency", "1", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: any("Ctrl-C stops everything" in line for line in lines) or proc.poll() is not None,
                 120, "run_local's banner")
        wait_for(lambda: "--flower" not in args or any(line.startswith("Flower: ") for line in lines)
                 or proc.poll() is not None, 30, "run_local's Flower line")
        banner = "".join(lines)
        assert proc.poll() is None, banner
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        yield banner, lines
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        reader.join(timeout=10)
        proc.stdout.close()
    assert code == 0
    assert "run_local: stopped" in "".join(lines)
    wait_for(lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], 10,
             "every child of run_local to exit")


def printed(banner: str, pattern: str) -> str:
    """A command of the banner, exactly as printed (to run as a user pasting it would)."""
    found = re.search(pattern, banner, re.M | re.S)
    assert found, f"{pattern!r} not in the banner:\n{banner}"
    return found.group(1)


def test_the_printed_walk_through_transcodes_the_sample_and_ctrl_c_stops_everything(tmp_path):
    need(bool(subprocess.run(["which", "ffmpeg", "curl"], capture_output=True).returncode == 0), "ffmpeg and curl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SG_")}
    with run_local(tmp_path, env, "--port", str(free_port())) as (banner, _):
        token = re.search(r"export TOKEN=(\S+)", banner).group(1)
        base = re.search(r"export B=(\S+)", banner).group(1)
        # The first admin client's printed credentials get a token that can list every client
        client_id = re.search(r"client_id: (c_\w+)", banner).group(1)
        secret = re.search(r"secret: +(\S+)", banner).group(1)
        issued = requests.post(f"{base}/auth/access-token", data={"client_id": client_id, "secret": secret},
                               timeout=30)
        assert issued.status_code == 200, issued.text
        admin = {"Authorization": f"Bearer {issued.json()['access_token']}"}
        assert requests.get(f"{base}/admin/clients", headers=admin, timeout=30).status_code == 200
        # The commands run exactly as printed, the test adding nothing to their text: a user pastes them
        # after the two exports, so TOKEN, B (and UUID, set by the submit) come through the environment.
        submit = printed(banner, r"^ +(UUID=\$\(.*?echo \$UUID)$")       # two lines with a continuation
        shell_env = {**env, "TOKEN": token, "B": base}
        job_id = subprocess.run(["bash", "-c", submit], env=shell_env, capture_output=True, text=True,
                                check=True).stdout.strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", job_id), job_id
        status = printed(banner, r'^ +for i in \$\(seq \d+\); do (curl -s -H "Authorization: Bearer \$TOKEN" '
                                 r'"\$B/transcode/status\?uuid=\$UUID") ')

        def finished() -> str | None:
            out = subprocess.run(["bash", "-c", status], env={**shell_env, "UUID": job_id}, capture_output=True,
                                 text=True).stdout
            return out if '"SUCCESS"' in out or '"FAILURE"' in out else None
        assert '"SUCCESS"' in wait_for(finished, 180, "the sample transcode", interval_s=0.5)


@pytest.fixture(params=["embedded", "rabbitmq"])
def backend_env(request) -> Iterator[tuple[str, dict[str, str]]]:
    """The environment of a run: the embedded default, or RabbitMQ + Redis + PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SG_", "FLOWER_"))}
    if request.param == "embedded":
        yield request.param, env
        return
    for port, what in ((5672, "RabbitMQ"), (6379, "Redis"), (5432, "PostgreSQL")):
        need(port_open("127.0.0.1", port), f"{what} on 127.0.0.1:{port}")
    vhost, database = rabbitmq_vhost("sg-run-local"), postgres_database("sg_run_local")
    try:
        yield request.param, {**env, "SG_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                              "SG_RESULT_BACKEND": "redis://127.0.0.1:6379/2",
                              "SG_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
                              "SG_JWT_SECRET": JWT_SECRET}
    finally:
        drop_rabbitmq_vhost(vhost)
        drop_postgres_database(database)


def test_flower_prints_its_password_and_shows_the_local_worker(tmp_path, backend_env):
    name, env = backend_env
    flower_port = free_port()
    with run_local(tmp_path, env, "--port", str(free_port()), "--no-sample", "--flower",
                   "--flower-port", str(flower_port)) as (banner, lines):
        line = next(x for x in lines if x.startswith("Flower: "))
        url, user, password = re.fullmatch(r"Flower: (http://\S+)  \(basic auth ([^:\s]+):(\S+)\)\n", line).groups()
        assert url == f"http://127.0.0.1:{flower_port}"
        assert requests.get(f"{url}/api/workers", timeout=30).status_code == 401
        assert requests.get(f"{url}/workers", auth=(user, password), timeout=30).status_code == 200
        note = "note: Flower shows no live data on the embedded broker"
        if name == "embedded":
            # Said before anything else, with the reason and the fix
            assert note in banner and "no fanout" in banner and "Set SG_BROKER_URL to RabbitMQ" in banner
            return
        assert note not in banner

        def local_worker() -> list[str]:
            answer = requests.get(f"{url}/api/workers", auth=(user, password), params={"refresh": "1"}, timeout=30)
            assert answer.status_code == 200, answer.text
            return [w for w in answer.json() if w.startswith("local@")]
        (worker,) = wait_for(local_worker, 60, "the local worker in Flower", interval_s=0.5)
        assert worker == f"local@{socket.gethostname()}"
