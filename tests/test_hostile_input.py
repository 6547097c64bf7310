"""Hostile input: redirects to private addresses, oversized and slow downloads, broken media for every
service, and the sweeper's decisions — each a failure with a code, never a hang or a crash."""
from __future__ import annotations

import http.server
import os
import random
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from requests.adapters import BaseAdapter

from service_gateway.errors import JobError
from service_gateway.settings import load_settings
from service_gateway.status import JobStatus
from service_gateway.store import JobStore, utcnow
from workers.sdk.executor import recover_expired
from workers.sdk.fetch import fetch


class RedirectTo(BaseAdapter):
    """A transport for one public-looking host that answers every GET with a redirect (a unit stub)."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code, response.url, response.request = 302, request.url, request
        response.headers["Location"] = self.location
        response.raw = None
        return response

    def close(self) -> None:
        pass


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/x",
                                    "http://[::1]/x", "http://10.0.0.7/x", "file:///etc/passwd", "gopher://x/"])
def test_a_redirect_to_a_private_address_or_another_scheme_is_refused(tmp_path, monkeypatch, target):
    monkeypatch.setattr("workers.sdk.fetch.check_doc_url", _public_first(target))
    original = requests.Session.__init__

    def session_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.mount("http://media.example.org/", RedirectTo(target))
    monkeypatch.setattr(requests.Session, "__init__", session_init)
    settings = load_settings({"data_dir": str(tmp_path)})
    with pytest.raises(JobError) as refused:
        fetch("http://media.example.org/clip.mp4", tmp_path, settings)
    assert refused.value.code == 207 and "redirect refused" in refused.value.message
    assert not refused.value.transient


def _public_first(target: str):
    """The real URL check, except that the test's first host counts as public (no DNS here)."""
    from service_gateway.urls import check_doc_url

    def check(url, **kwargs):
        if url.startswith("http://media.example.org/"):
            return "http"
        return check_doc_url(url, **kwargs)
    return check


class _Server:
    """A loopback media server: /big streams more than the limit, /slow never answers, /teapot is 418."""

    def __init__(self) -> None:
        stop = self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/big":
                    self.send_response(200)
                    self.end_headers()           # no Content-Length: the limit must hold while streaming
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                elif self.path == "/slow":
                    stop.wait(10)
                elif self.path.startswith("/drip"):
                    # A byte every 50 ms: never idle long enough for a per-read timeout to trip
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    if self.path == "/drip-body":
                        self.wfile.write(b"Content-Length: 100000\r\n\r\n")
                    while not stop.wait(0.05):
                        try:
                            self.wfile.write(b"x" if self.path == "/drip-body" else b"X-Drip: 1\r\n")
                            self.wfile.flush()
                        except OSError:
                            return
                else:
                    self.send_error(418)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    running = _Server()
    yield running
    running.close()


def test_downloads_are_bounded_in_size_and_time(tmp_path, server):
    settings = load_settings({"data_dir": str(tmp_path), "allow_private_urls": True,
                              "download_max_bytes": 1024 * 1024, "download_timeout_s": 0.5})
    with pytest.raises(JobError) as too_big:
        fetch(f"{server.url}/big", tmp_path, settings)
    assert too_big.value.code == 301 and "larger than" in too_big.value.message and not too_big.value.transient
    with pytest.raises(JobError) as too_slow:
        fetch(f"{server.url}/slow", tmp_path, settings)
    assert too_slow.value.code == 301 and too_slow.value.transient          # a timeout may pass: retried
    with pytest.raises(JobError) as refused:
        fetch(f"{server.url}/teapot", tmp_path, settings)
    assert "HTTP 418" in refused.value.message and not refused.value.transient
    with pytest.raises(JobError) as private:
        fetch(f"{server.url}/big", tmp_path, load_settings({"data_dir": str(tmp_path)}))
    assert private.value.code == 207


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_drip_feeding_server_is_cut_at_the_download_deadline(tmp_path, server, path):
    # Each read gets a byte well within its 2 s timeout, so only the total deadline can stop this one
    settings = load_settings({"data_dir": str(tmp_path), "allow_private_urls": True,
                              "download_timeout_s": 2, "download_deadline_s": 0.5})
    with pytest.raises(JobError) as cut:
        fetch(f"{server.url}{path}", tmp_path, settings)
    assert cut.value.code == 301 and cut.value.transient, cut.value
    assert "SG_DOWNLOAD_DEADLINE_S" in cut.value.message


# -- DNS rebinding: the connection goes to the address that was checked -----------------------------
class Resolver:
    """``socket.getaddrinfo`` for one made-up host name: the answers in turn (the last one repeats)."""

    def __init__(self, monkeypatch, name: str, *answers: str) -> None:
        import socket
        self.name, self.answers, self.asked = name, list(answers), 0
        real = socket.getaddrinfo

        def getaddrinfo(host, port, *args, **kwargs):
            if host != name:
                return real(host, port, *args, **kwargs)
            address = self.answers[min(self.asked, len(self.answers) - 1)]
            self.asked += 1
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Recorder:
    """A loopback HTTP(S) server that records each request's Host header (and the TLS SNI)."""

    def __init__(self, tls_dir: Path | None = None) -> None:
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hosts.append(self.headers["Host"])
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"media")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        if tls_dir is not None:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
            context.sni_callback = lambda sock, name, ctx: outer.sni.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_name_is_resolved_once_per_connection_and_only_the_checked_address_is_connected_to(tmp_path, monkeypatch):
    # Given a host name whose answers change (DNS rebinding): public first, the loopback server's after
    import urllib3.util.connection

    recorder = Recorder()
    attempts: list[tuple[str, int]] = []

    def create_connection(address, *args, **kwargs):     # records the target; sends nothing anywhere
        attempts.append(address)
        raise ConnectionRefusedError("refused by the test")
    try:
        monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
        resolver = Resolver(monkeypatch, "media.example.org", "93.184.216.34", "127.0.0.1")
        settings = load_settings({"data_dir": str(tmp_path)})          # private addresses refused
        # When a job downloads from it
        with pytest.raises(JobError) as failed:
            fetch(f"http://media.example.org:{recorder.port}/clip.mp4", tmp_path, settings)
        # Then the name was looked up once, and the connection went to that checked address only
        assert failed.value.code == 301 and failed.value.transient
        assert resolver.asked == 1 and attempts == [("93.184.216.34", recorder.port)] and recorder.hosts == []

        # And when the one lookup answers a private address, nothing is connected to at all
        attempts.clear()
        Resolver(monkeypatch, "media.example.org", "127.0.0.1", "93.184.216.34")
        with pytest.raises(JobError) as refused:
            fetch(f"http://media.example.org:{recorder.port}/clip.mp4", tmp_path, settings)
        assert refused.value.code == 207 and "private" in refused.value.message
        assert attempts == [] and recorder.hosts == []
    finally:
        recorder.close()


def test_a_pinned_download_keeps_the_host_name_in_the_host_header(tmp_path, monkeypatch):
    recorder = Recorder()
    try:
        resolver = Resolver(monkeypatch, "media.test", "127.0.0.1")
        settings = load_settings({"data_dir": str(tmp_path), "allow_private_urls": True})
        path = fetch(f"http://media.test:{recorder.port}/clip.mp4", tmp_path, settings)
        assert path.read_bytes() == b"media"
        # one lookup, the connection's (private addresses allowed: no separate check)
        assert recorder.hosts == [f"media.test:{recorder.port}"] and resolver.asked == 1
    finally:
        recorder.close()


def test_a_pinned_tls_connection_sends_sni_and_verifies_the_certificate_for_the_host_name(tmp_path, monkeypatch):
    import subprocess

    from service_gateway.pinned_http import pinned_session
    # A certificate for media.test only (not for 127.0.0.1, the address the connection goes to)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=media.test",
                    "-addext", "subjectAltName=DNS:media.test", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    recorder = Recorder(tls_dir=tmp_path)
    try:
        Resolver(monkeypatch, "media.test", "127.0.0.1")
        session, _ = pinned_session(allow_private=True)
        with session:
            answer = session.get(f"https://media.test:{recorder.port}/x", verify=str(tmp_path / "cert.pem"),
                                 timeout=10)
            assert answer.content == b"media"
            assert recorder.sni == ["media.test"] and recorder.hosts == [f"media.test:{recorder.port}"]
            # The same certificate does not pass for another name on the same address
            Resolver(monkeypatch, "other.test", "127.0.0.1")
            with pytest.raises(requests.exceptions.SSLError):
                session.get(f"https://other.test:{recorder.port}/x", verify=str(tmp_path / "cert.pem"), timeout=10)
    finally:
        recorder.close()


# -- broken media, to every service, through the real worker -----------------------------------------
def broken_variants(media: Path, directory: Path) -> dict[str, Path]:
    """Truncated and corrupted copies of a real clip (seeded, so a failure can be replayed)."""
    rng = random.Random(1234)
    data = (media / "short.mp4").read_bytes()
    directory.mkdir(exist_ok=True)
    variants = {
        "truncated-head": data[:2048],
        "truncated-half": data[: len(data) // 2],
        "bit-flipped": bytes(b ^ 0xFF if rng.random() < 0.02 else b for b in data),
        "random-bytes": os.urandom(200_000),
        "empty": b"",
    }
    paths = {}
    for name, content in variants.items():
        paths[name] = directory / f"{name}.mp4"
        paths[name].write_bytes(content)
    return paths


SERVICES = ("probe", "transcode", "thumbnails", "transitions", "loudness", "speech", "faces")


@pytest.mark.e2e
def test_broken_media_ends_in_failure_with_a_code_or_a_success_never_a_hang(stack, media):
    if stack.name != "embedded":
        pytest.skip("one backend is enough: the media path does not depend on the broker")
    paths = broken_variants(media, media / f"broken-{uuid.uuid4().hex[:6]}")
    jobs = {(service, name): stack.submit(service, f"file://{path}") for service in SERVICES
            for name, path in paths.items()}
    for (service, name), job_id in jobs.items():
        final = stack.wait_status(service, job_id, {"SUCCESS", "FAILURE", "REVOKED"}, timeout_s=120)
        if final["status"] == "FAILURE":
            # Unreadable media is 305; a stream that breaks half-way may surface as 306 from the tool
            assert final["result"]["code"] in (305, 306), (service, name, final)
            assert str(media) not in final["result"]["message"]
        else:
            # A partly damaged file can still be decodable (ffmpeg conceals errors): then it must succeed
            assert final["status"] == "SUCCESS" and name in ("bit-flipped", "truncated-half"), (service, name, final)
    assert stack.worker is not None and stack.worker.poll() is None        # the worker survived all of it


# -- the sweeper's two decisions ----------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []

    def running(self, job_id, state, meta):
        self.states.append((job_id, state.value))

    def success(self, job_id, result):
        self.states.append((job_id, "SUCCESS"))

    def failed(self, job_id, state, error):
        self.states.append((job_id, f"{state.value}:{error.code}"))

    def progress_of(self, job_id):
        return 40


def test_the_sweeper_requeues_an_orphan_and_fails_one_past_its_retries(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/jobs.sqlite")
    store.migrate()
    settings = load_settings({"data_dir": str(tmp_path), "max_retries": 2})
    ids = {}
    for name, attempts in (("orphan", 1), ("hopeless", 3), ("alive", 1)):
        ids[name] = str(uuid.uuid4())
        store.add(uuid=ids[name], owner="o", service="probe", queue="probe", status="PENDING", doc_url="file:///x",
                  params={}, misc={}, progress=0, cancel_requested=False)
        assert store.mark_started(ids[name], "gone-host", lease_owner="gone-host:1", lease_s=30)
        lease = 30 if name == "alive" else -5
        store._run(set_lease(ids[name], attempts, utcnow() + timedelta(seconds=lease)))
    requeued: list[str] = []
    sink = Sink()
    assert recover_expired(store, settings, sink, lambda job, countdown: requeued.append(job.uuid)) == 2
    assert requeued == [ids["orphan"]]
    orphan, hopeless, alive = (store.get(ids[n]) for n in ("orphan", "hopeless", "alive"))
    assert orphan.status == "RETRY" and orphan.lease_owner == "queued" and "stopped renewing" in orphan.note
    assert (hopeless.status, hopeless.error_code) == ("FAILURE", 110) and hopeless.finished_at is not None
    assert alive.status == "STARTED" and alive.lease_owner == "gone-host:1"
    assert (ids["hopeless"], "FAILURE:110") in sink.states
    # A second sweep finds nothing new: the orphan's queue lease is still valid
    assert recover_expired(store, settings, sink, lambda job, countdown: requeued.append(job.uuid)) == 0
    assert JobStatus(store.get(ids["orphan"]).status) is JobStatus.RETRY


def set_lease(job_id: str, attempts: int, lease_until):
    from sqlalchemy import update

    from service_gateway.store import Job
    return update(Job).where(Job.uuid == job_id).values(attempts=attempts, lease_until=lease_until)
