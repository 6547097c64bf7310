"""The stack the benchmarks measure: gunicorn gateway, Celery workers, Flower, on one broker.

Production configuration, as docs/operations.md documents it:

- gunicorn with the shipped ``gunicorn.conf.py`` (2 gthread processes x 8 threads, JSON access log),
- RabbitMQ (a private vhost made for the run and deleted after it, so nothing else's queues are
  touched), Redis result backend (db ``SG_BENCH_REDIS_DB``, default 9; the run's keys are deleted
  after it), PostgreSQL job store (a database made for the run and dropped after it),
- ``celery -A workers worker -c 2`` for the service queues, ``celery -A benchmarks.raw_celery
  worker -c 2`` for the raw-Celery peer, and Flower on the workers' app
  (``celery -A benchmarks.flower_app flower``, see that module for why not ``-A workers``) with
  ``FLOWER_UNAUTHENTICATED_API=true``: Flower is measured as a peer, never deployed like that.

The embedded default (SQLite broker, backend and store) is the other kind, for the dispatch figure.
Operator tokens (`sg token`) are used: no client, so no quota or login throttle applies.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service_gateway.auth import make_token  # noqa: E402
from service_gateway.settings import SETTINGS, load_settings  # noqa: E402
from service_gateway.store import JobStore  # noqa: E402
from tests.stack import (BIN, drop_postgres_database, drop_rabbitmq_vhost, free_port,  # noqa: E402
                         port_open, postgres_database, rabbitmq_vhost, wait_for)

MEDIA_DIR = ROOT / "var" / "bench-media"
NOOP_MODULE = "benchmarks.noop_service"
NOOP_QUEUE = "noop"
START_TIMEOUT_S = 90
REDIS_DB = int(os.environ.get("SG_BENCH_REDIS_DB", "9"))


def default_service_modules() -> list[str]:
    return next(s.default for s in SETTINGS if s.name == "service_modules")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_clip(path: Path, seconds: float, size: str = "1280x720") -> Path:
    """A clip with moving video and a tone (testsrc2 + sine), made once and kept in var/bench-media."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.mp4")
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=300:sample_rate=48000:duration={seconds}",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(tmp))
        tmp.replace(path)
    return path


@dataclass
class BenchStack:
    """One set of SG_* settings and the processes started on it."""

    kind: str                       # "production" or "embedded"
    env: dict[str, str]
    work: Path
    port: int = field(default_factory=free_port)
    flower_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    worker_hostname: str = ""
    vhost: str | None = None
    database: str | None = None
    raw_ids: list[str] = field(default_factory=list)       # raw-Celery task ids, for the clean-up
    gunicorn_config: str = str(ROOT / "gunicorn.conf.py")
    worker_app: str = "workers"

    def __post_init__(self) -> None:
        self.settings = load_settings(environ=self.env)
        self.store = JobStore(self.settings.database)
        self.secret = self.settings.secret
        self.session = requests.Session()
        self.tiny = make_clip(MEDIA_DIR / "tiny-1s-160p.mp4", 1, "284x160")
        self._celery = None
        self._raw = None

    # -- where things are ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    def doc_url(self, path: Path | None = None) -> str:
        return (path or self.tiny).resolve().as_uri()

    def token(self, sub: str) -> str:
        return make_token(self.secret, sub, expires_in_s=6 * 3600)

    def headers(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub)}"}

    @property
    def celery(self):
        """A client Celery app like the gateway's (routes for every service), for reading results."""
        if self._celery is None:
            from service_gateway.runtime import Runtime
            self._celery = Runtime(self.settings).celery
        return self._celery

    @property
    def raw(self):
        """The raw-Celery peer's client app (same factory and settings as benchmarks/raw_celery.py)."""
        if self._raw is None:
            from benchmarks.raw_celery import RAW_QUEUE, RAW_SERVICE
            from service_gateway.celery_app import make_celery
            self._raw = make_celery(self.settings, {RAW_SERVICE: RAW_QUEUE})
        return self._raw

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = open(self.work / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(args, env={**self.env, **(extra_env or {})}, cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start(self, *, worker_queues: list[str] | None = None, flower: bool = True, raw: bool = True) -> None:
        """Start gateway, worker, raw worker and Flower at once, and wait until each answers."""
        from service_gateway.runtime import Runtime
        self.store.migrate()
        queues = worker_queues if worker_queues is not None else Runtime(self.settings).queues
        self.worker_hostname = f"bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self._spawn("gateway", [str(BIN / "gunicorn"), "-c", self.gunicorn_config,
                                "--bind", f"127.0.0.1:{self.port}", "service_gateway:create_app()"])
        self._spawn("worker", [str(BIN / "celery"), "-A", self.worker_app, "worker", "-Q", ",".join(queues), "-c", "2",
                               "-n", self.worker_hostname, "--loglevel", "INFO", "--without-gossip",
                               "--without-mingle"])
        if raw:
            from benchmarks.raw_celery import RAW_QUEUE
            self._spawn("raw_worker", [str(BIN / "celery"), "-A", "benchmarks.raw_celery", "worker", "-Q", RAW_QUEUE,
                                       "-c", "2", "-n", f"raw-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "WARNING",
                                       "--without-gossip", "--without-mingle"])
        if flower:
            self._spawn("flower", [str(BIN / "celery"), "-A", "benchmarks.flower_app", "flower",
                                   f"--port={self.flower_port}", "--address=127.0.0.1"],
                        # The peer as the issue measures it: open (our Flower refuses that without the opt-in).
                        {"FLOWER_UNAUTHENTICATED_API": "true", "SG_FLOWER_ALLOW_OPEN": "true"})
        wait_for(self._gateway_up, START_TIMEOUT_S, "the gateway to answer /health", 0.1)
        wait_for(self._worker_up, START_TIMEOUT_S, "the worker to come online", 0.1)
        if raw:
            self.raw.send_task(_raw_task(), args=[time.time()], queue=_raw_queue()).get(timeout=START_TIMEOUT_S)
        if flower:
            wait_for(self._flower_up, START_TIMEOUT_S, "Flower to answer", 0.1)

    def _alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def _gateway_up(self) -> bool:
        self._alive("gateway")
        try:
            return requests.get(f"{self.url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _worker_up(self) -> bool:
        self._alive("worker")
        return any(w.hostname == self.worker_hostname for w in self.store.workers_online(within_s=60))

    def _flower_up(self) -> bool:
        self._alive("flower")
        if not port_open("127.0.0.1", self.flower_port):
            return False
        try:
            return requests.get(f"{self.flower_url}/healthcheck", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def add_consumer(self, queue: str) -> None:
        """Make the running worker consume ``queue`` too (Celery remote control; RabbitMQ only)."""
        replies = self.celery.control.add_consumer(queue, destination=[self.worker_hostname], reply=True,
                                                   timeout=10)
        if not replies:
            raise RuntimeError(f"the worker did not answer add_consumer({queue!r})")

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def gunicorn_workers(self) -> list[int]:
        import psutil
        return [p.pid for p in psutil.Process(self.procs["gateway"].pid).children()]

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.work / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process at once (warm shutdown), SIGKILL what is left after 30 s."""
        running = [proc for proc in self.procs.values() if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        if self.store._engine is not None:
            self.store._engine.dispose()

    # -- broker -------------------------------------------------------------------------------
    def drain(self, queue: str) -> list[str]:
        """Take every message off ``queue`` (RabbitMQ) and return their task ids: a purge that counts."""
        from amqp.exceptions import NotFound
        from kombu import Connection
        ids: list[str] = []
        with Connection(self.settings.broker) as conn:
            channel = conn.default_channel
            while True:
                try:
                    message = channel.basic_get(queue, no_ack=True)
                except NotFound:          # nothing was ever published to it
                    return ids
                if message is None:
                    return ids
                ids.append((message.headers or {}).get("id") or "")

    def pg_sessions(self) -> int | None:
        """Sessions opened on the job store's database so far (None on the embedded default).

        PostgreSQL updates this counter lazily (backends flush their statistics about once a
        second), so a difference over a run is right to within the pool's few connections: good
        enough to tell a pool that keeps its connections from one that opens hundreds.
        """
        if self.kind != "production":
            return None
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            return conn.exec_driver_sql("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
                                        ).scalar()

    def queue_depth(self, queue: str) -> int:
        from kombu import Connection
        with Connection(self.settings.broker) as conn:
            return conn.default_channel.queue_declare(queue, passive=True).message_count


def _raw_task() -> str:
    from benchmarks.raw_celery import RAW_TASK
    return RAW_TASK


def _raw_queue() -> str:
    from benchmarks.raw_celery import RAW_QUEUE
    return RAW_QUEUE


def base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SG_", "FLOWER_", "PROMETHEUS_"))}
    # gunicorn.conf.py's process and thread counts may be set for a run (e.g. to compare layouts).
    env.update({k: v for k, v in os.environ.items() if k in ("SG_GUNICORN_WORKERS", "SG_GUNICORN_THREADS")})
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SG_DATA_DIR": str(work / "data"),
        "SG_JWT_SECRET": "bench-" + secrets.token_hex(24),
        "SG_FILE_ROOTS": str(MEDIA_DIR),
        "SG_SERVICE_MODULES": ",".join([*default_service_modules(), NOOP_MODULE]),
    })
    return env


def _forget_results(stack: BenchStack, extra_ids: list[str]) -> None:
    """Delete the run's keys from the Redis result db (job ids of the store, raw task ids)."""
    import redis
    from sqlalchemy import text
    try:
        with stack.store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(text("SELECT uuid FROM jobs"))]
    except Exception:
        ids = []
    client = redis.Redis.from_url(stack.settings.result_backend)
    keys = [f"celery-task-meta-{i}" for i in [*ids, *extra_ids]]
    for start in range(0, len(keys), 5000):
        client.delete(*keys[start:start + 5000])
    client.close()


@contextmanager
def production_stack(work: Path, stack_options: dict[str, Any] | None = None,
                     **start_options: Any) -> Iterator[BenchStack]:
    """RabbitMQ + Redis + PostgreSQL, with a vhost and a database made for the run and removed after."""
    for name, port in (("RabbitMQ", 5672), ("Redis", 6379), ("PostgreSQL", 5432)):
        if not port_open("127.0.0.1", port):
            raise RuntimeError(f"{name} is not listening on 127.0.0.1:{port} (`make services` starts it)")
    vhost, database = rabbitmq_vhost("sg-bench"), postgres_database("sg_bench")
    env = base_env(work)
    env.update({"SG_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
                "SG_RESULT_BACKEND": f"redis://127.0.0.1:6379/{REDIS_DB}",
                "SG_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}"})
    stack = BenchStack("production", env, work, vhost=vhost, database=database, **(stack_options or {}))
    try:
        with _running(stack, **start_options):
            yield stack
    finally:
        try:
            _forget_results(stack, stack.raw_ids)
        finally:
            drop_postgres_database(database)
            drop_rabbitmq_vhost(vhost)


@contextmanager
def embedded_stack(work: Path) -> Iterator[BenchStack]:
    """The embedded default: SQLite broker, result backend and job store under the data dir."""
    stack = BenchStack("embedded", base_env(work), work)
    try:
        with _running(stack, flower=False):
            yield stack
    finally:
        shutil.rmtree(work / "data", ignore_errors=True)


@contextmanager
def _running(stack: BenchStack, **start_options: Any) -> Iterator[None]:
    """Start the stack, stop it after; on a failure print each process's log tail first."""
    try:
        stack.start(**start_options)
        yield
    except BaseException:
        for name in stack.procs:
            print(f"--- {name} log ---\n{stack.tail(name)}", file=sys.stderr)
        raise
    finally:
        stack.stop()
