"""Fixtures: generated media, a real stack per backend, and the Flask app for unit tests."""
from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.stack import (CI, Stack, drop_postgres_database, drop_rabbitmq_vhost, free_port, port_open,
                         postgres_database, rabbitmq_vhost)

JWT_SECRET = "test-secret-0123456789abcdef-0123456789"


def need(ok: bool, what: str) -> None:
    """Skip when a service is missing locally; fail in CI, where every service must be there."""
    if not ok:
        if CI:
            pytest.fail(f"{what} is required in CI")
        pytest.skip(f"{what} is not available")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    """Clips generated with ffmpeg's lavfi sources; nothing is downloaded."""
    need(bool(shutil.which("ffmpeg") and shutil.which("ffprobe")), "ffmpeg")
    root = tmp_path_factory.mktemp("media")
    # 4 s, 320x240 @ 25 fps, 440 Hz stereo 44.1 kHz tone: quick jobs and exact metadata.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=4",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=4", "-ac", "2",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
           str(root / "short.mp4"))
    # 20 s 720p: long enough to see progress rise in several steps.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=20",
           "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000:duration=20",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
           str(root / "medium.mp4"))
    # Not media: the header of an MP4 followed by garbage.
    data = (root / "short.mp4").read_bytes()
    (root / "corrupt.mp4").write_bytes(data[:64] + os.urandom(4096))
    (root / "notes.txt").write_text("this is not a media file\n")
    return root


@pytest.fixture(scope="session")
def http_media(media) -> str:
    """Serve the media dir over HTTP on loopback; returns the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(media))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class AnnotationStore:
    """A stand-in annotation storage on loopback that records what workers POST.

    ``ann_doc_id`` steers it: ``fail-*`` always answers 500, ``flaky-*`` answers 500 the first
    time and 201 after, ``hold-*`` answers 201 only once the test calls :meth:`release` (so that
    it can look at the job while the POST is in flight; HOLD_DEADLINE_S at most); anything else 201.
    """

    HOLD_DEADLINE_S = 20

    def __init__(self) -> None:
        self.posts: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.released: set[str] = set()
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                doc_id = self.path.rsplit("/", 1)[-1]
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                with store.lock:
                    tries = store.posts.setdefault(doc_id, [])
                    tries.append(body)
                    fail = doc_id.startswith("fail-") or (doc_id.startswith("flaky-") and len(tries) == 1)
                    store.changed.notify_all()
                    if doc_id.startswith("hold-"):
                        store.changed.wait_for(lambda: doc_id in store.released, timeout=store.HOLD_DEADLINE_S)
                self.send_response(500 if fail else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/annotations/{{ann_doc_id}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self, doc_id: str) -> list[dict]:
        with self.lock:
            return list(self.posts.get(doc_id, []))

    def wait_received(self, doc_id: str, timeout_s: float) -> list[dict]:
        """Wait until a POST for ``doc_id`` arrived (a ``hold-*`` one is then held until :meth:`release`)."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.posts.get(doc_id), timeout=timeout_s):
                raise AssertionError(f"timed out after {timeout_s} s waiting for a POST of {doc_id}")
            return list(self.posts[doc_id])

    def release(self, doc_id: str) -> None:
        """Let the held POSTs of ``doc_id`` be answered."""
        with self.changed:
            self.released.add(doc_id)
            self.changed.notify_all()


@pytest.fixture(scope="session")
def annotation_store():
    store = AnnotationStore()
    yield store
    store.server.shutdown()
    store.server.server_close()


def _base_env(work: Path, media: Path, annotation_store: AnnotationStore) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SG_")}
    env.update({
        "SG_DATA_DIR": str(work / "data"),
        "SG_JWT_SECRET": JWT_SECRET,
        "SG_FILE_ROOTS": str(media),
        "SG_ALLOW_PRIVATE_URLS": "true",          # the media server of the tests is on loopback
        "SG_STORAGE_DOC_URL": f"file://{media}/{{storage_doc_id}}",
        "SG_PROGRESS_INTERVAL_S": "0.3",
        "SG_WEBHOOK_PROGRESS_INTERVAL_S": "0.5",  # progress callbacks: several per transcode
        "SG_WORKER_HEARTBEAT_S": "1",
        "SG_LOG_FORMAT": "json",
        "SG_ANNOTATION_STORAGE_URL": annotation_store.url,
        "SG_ANNOTATION_STORAGE_RETRIES": "2",
        # Fault tests wait for leases and backoffs: keep them short.
        "SG_JOB_LEASE_S": "3",
        "SG_RETRY_BACKOFF_S": "0.2",
        "SG_RETRY_BACKOFF_MAX_S": "1",
        "SG_STATE_WRITE_RETRY_S": "90",
        "SG_WORKER_METRICS_PORT": str(free_port()),
        "SG_SSE_MAX_S": "4",                      # streams end and resume often: the tests see both
        "SG_STATUS_CACHE_S": "1",                 # a forgotten result shows as EXPIRED within a second
    })
    return env


@pytest.fixture(scope="session", params=["embedded", "rabbitmq"])
def stack(request, tmp_path_factory, media, annotation_store):
    """A running gateway + worker: embedded SQLite, or RabbitMQ + Redis + PostgreSQL."""
    backend = request.param
    work = tmp_path_factory.mktemp(f"stack-{backend}")
    env = _base_env(work, media, annotation_store)
    cleanup = []
    if backend == "rabbitmq":
        need(port_open("127.0.0.1", 5672), "RabbitMQ on 127.0.0.1:5672")
        need(port_open("127.0.0.1", 6379), "Redis on 127.0.0.1:6379")
        need(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
        vhost = rabbitmq_vhost()
        database = postgres_database()
        cleanup += [lambda: drop_rabbitmq_vhost(vhost), lambda: drop_postgres_database(database)]
        env.update({
            "SG_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            "SG_RESULT_BACKEND": "redis://127.0.0.1:6379/1",
            "SG_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        })
    running = Stack(backend, env, work)
    try:
        running.start()
        yield running
    except Exception:
        print(running.tail("gateway.log"), running.tail("worker.log"), sep="\n")
        raise
    finally:
        running.stop()
        for step in cleanup:
            step()


@pytest.fixture
def app(tmp_path):
    """A Flask app on the embedded default in a temp dir (unit tests; no worker)."""
    from service_gateway import create_app
    return create_app({"data_dir": str(tmp_path), "jwt_secret": JWT_SECRET, "log_format": "text"})


@pytest.fixture
def client(app):
    return app.test_client()


class AuthActions:
    """Headers for a caller, as flaskr's tests do it."""

    def headers(self, sub: str = "alice", admin: bool = False, bare: bool = False,
                expires_in_s: int = 3600) -> dict[str, str]:
        from service_gateway.auth import make_token
        token = make_token(JWT_SECRET, sub, admin=admin, expires_in_s=expires_in_s)
        return {"Authorization": token if bare else f"Bearer {token}"}


@pytest.fixture
def auth() -> AuthActions:
    return AuthActions()
