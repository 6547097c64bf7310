"""A real stack for end-to-end tests: gunicorn gateway + Celery worker processes on one backend."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from service_gateway.auth import make_token
from service_gateway.settings import load_settings
from service_gateway.store import JobStore

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Stack:
    """Gateway and worker processes sharing one set of ``SG_*`` settings."""

    name: str
    env: dict[str, str]
    work_dir: Path
    port: int = field(default_factory=free_port)
    gateway: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.settings = load_settings(environ=self.env)
        self.store = JobStore(self.settings.database)
        self.session = requests.Session()
        from service_gateway.runtime import Runtime
        self.queues = Runtime(self.settings).queues

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes ----------------------------------------------------------------------------
    def start(self) -> "Stack":
        self.store.migrate()
        self.start_worker()
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        """gunicorn with the shipped gunicorn.conf.py, as in production (2 gthread workers x 8 threads)."""
        with open(self.work_dir / "gateway.log", "ab") as log:
            self.gateway = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{self.port}",
                 "service_gateway:create_app()"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._gateway_up, START_TIMEOUT_S, f"the {self.name} gateway to answer /health")

    def _gateway_up(self) -> bool:
        assert self.gateway is not None
        if self.gateway.poll() is not None:
            raise AssertionError(f"gateway exited: {self.tail('gateway.log')}")
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:       # refused, or a slow start under load: ask again
            return False

    def start_worker(self, concurrency: int = 2) -> None:
        hostname = f"test-{uuid.uuid4().hex[:6]}@%h"
        with open(self.work_dir / "worker.log", "ab") as log:
            self.worker = subprocess.Popen(
                [str(BIN / "celery"), "-A", "workers", "worker", "-Q", ",".join(self.queues), "-c", str(concurrency),
                 "-n", hostname, "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._worker_online(hostname.replace("%h", socket.gethostname())),
                 START_TIMEOUT_S, f"the {self.name} worker to come online")

    def _worker_online(self, hostname: str) -> bool:
        assert self.worker is not None
        if self.worker.poll() is not None:
            raise AssertionError(f"worker exited: {self.tail('worker.log')}")
        return any(w.hostname == hostname for w in self.store.workers_online(within_s=60))

    def worker_log_lines(self, job_id: str, message: str) -> list[str]:
        """The worker's log lines about ``job_id`` that contain ``message``."""
        text = (self.work_dir / "worker.log").read_text(errors="replace")
        return [line for line in text.splitlines() if job_id in line and message in line]

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a lost container or node would."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)        # warm shutdown of the main process
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait()
        self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.gateway and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.gateway.pid, signal.SIGKILL)
        if self.store._engine is not None:
            self.store._engine.dispose()

    def tail(self, log_name: str, lines: int = 40) -> str:
        path = self.work_dir / log_name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- HTTP ---------------------------------------------------------------------------------
    def token(self, sub: str = "alice", admin: bool = False, expires_in_s: int = 3600) -> str:
        return make_token(self.settings.secret, sub, admin=admin, expires_in_s=expires_in_s)

    def headers(self, sub: str = "alice", admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, admin)}"}

    def request(self, method: str, path: str, *, sub: str = "alice", admin: bool = False,
                **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", None) or self.headers(sub, admin)
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def submit(self, service: str, doc_url: str, sub: str = "alice", **params: Any) -> str:
        response = self.request("POST", f"/{service}/process", sub=sub,
                                json={"doc_url": doc_url, "params": params})
        assert response.status_code == 202, response.text
        return response.json()["uuid"]

    def status(self, service: str, job_id: str, sub: str = "alice") -> dict[str, Any]:
        response = self.request("GET", f"/{service}/status", sub=sub, params={"uuid": job_id})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_status(self, service: str, job_id: str, statuses: set[str], timeout_s: float = 90,
                    sub: str = "alice", seen: list | None = None) -> dict[str, Any]:
        """Poll the status route until the job reaches one of ``statuses``; record bodies in ``seen``."""
        def reached() -> dict[str, Any] | None:
            body = self.status(service, job_id, sub)
            if seen is not None:
                seen.append(body)
            return body if body["status"] in statuses else None
        return wait_for(reached, timeout_s, f"job {job_id} to reach {statuses}", interval_s=0.1)


def rabbitmq_vhost(prefix: str = "sg-test") -> str:
    """Create a private vhost so that tests never share queues with anything else."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")
    if not ctl:
        raise RuntimeError("rabbitmqctl not found")
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run([ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    return vhost


def drop_rabbitmq_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def postgres_database(prefix: str = "sg_test") -> str:
    import psycopg
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_postgres_database(name: str) -> None:
    import psycopg
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the real services, stopped and started by the fault tests -------------------------------------
def rabbitmq_app(action: str) -> None:
    """``stop_app`` / ``start_app``: RabbitMQ's listeners go away and come back (the node keeps running)."""
    subprocess.run(["rabbitmqctl", action], check=True, capture_output=True, timeout=120)
    if action == "start_app":
        wait_for(lambda: port_open("127.0.0.1", 5672), 60, "RabbitMQ to listen again")


def rabbitmq_env(**values: int) -> None:
    """Set RabbitMQ application settings at run time (e.g. consumer_timeout in ms)."""
    calls = ", ".join(f"application:set_env(rabbit, {k}, {v})" for k, v in values.items())
    subprocess.run(["rabbitmqctl", "eval", calls + "."], check=True, capture_output=True, timeout=60)


def redis_stop() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)
    wait_for(lambda: not port_open("127.0.0.1", 6379), 30, "Redis to stop")


def redis_start() -> None:
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                    "--save", "", "--appendonly", "no"], check=True, capture_output=True, timeout=30)
    wait_for(lambda: port_open("127.0.0.1", 6379), 30, "Redis to listen again")


def postgres(action: str) -> None:
    """``stop`` (fast: connections are cut) or ``start`` the local PostgreSQL cluster."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    wait_for(lambda: port_open("127.0.0.1", 5432) == (action == "start"), 60, f"PostgreSQL to {action}")
