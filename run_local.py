#!/usr/bin/env python3
"""Run Service Gateway on one machine: gateway + one worker for all queues (+ Flower).

    python run_local.py [--port 5000] [--data-dir ./var] [--flower [--flower-port 5555]]

With no SG_BROKER_URL it uses the embedded default (SQLite files under the data dir). It prints
an admin token and curl commands to paste, and Ctrl-C stops everything.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--data-dir", default=os.environ.get("SG_DATA_DIR", "./var"))
    parser.add_argument("--flower", action="store_true", help="also start Flower, behind basic auth")
    parser.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--no-sample", action="store_true", help="do not generate the sample clip")
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    media_dir = data_dir / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("SG_DATA_DIR", str(data_dir))
    env.setdefault("SG_ALLOW_PRIVATE_URLS", "true")
    env.setdefault("SG_FILE_ROOTS", str(media_dir))
    env.setdefault("SG_LOG_FORMAT", "text")
    os.environ.update(env)

    from service_gateway.auth import make_token
    from service_gateway.errors import SettingsError
    from service_gateway.settings import load_settings
    from service_gateway.store import JobStore
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"run_local: configuration error: {exc}", file=sys.stderr)
        return 2
    store = JobStore(settings.database)
    store.migrate()   # once, before gateway and worker race for it
    admin_client = local_admin_client(store, settings.data_path)

    sample = media_dir / "sample-720p.mp4"
    if not args.no_sample and not sample.exists():
        make_sample(sample)

    bin_dir = Path(sys.executable).parent
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, argv: list[str]) -> None:
        procs.append((name, subprocess.Popen(argv, env=env, start_new_session=True)))

    start("gateway", [str(bin_dir / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "--bind",
                      f"127.0.0.1:{args.port}", "--graceful-timeout", "10", "service_gateway:create_app()"])
    queues = ",".join(sorted(load_queues(settings)))
    start("worker", [str(bin_dir / "celery"), "-A", "workers", "worker", "-Q", queues, "-c", str(args.concurrency),
                     "-n", "local@%h", "--loglevel", "INFO"])
    flower_auth = ""
    if args.flower:
        if settings.embedded:
            print("note: Flower shows no live data on the embedded broker: it has no fanout, so no "
                  "worker events or remote control. Set SG_BROKER_URL to RabbitMQ for a live Flower.")
        # Flower behind basic auth, never open: the operator's own, or a password made for this run.
        flower_auth = os.environ.get("FLOWER_BASIC_AUTH") or f"admin:{secrets.token_urlsafe(12)}"
        procs.append(("flower", subprocess.Popen(
            [str(bin_dir / "celery"), "-A", "workers", "flower", f"--port={args.flower_port}", "--address=127.0.0.1"],
            env={**env, "FLOWER_BASIC_AUTH": flower_auth}, start_new_session=True)))

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if not wait_healthy(args.port, procs, lambda: stopping):
            return 1
        token = make_token(settings.secret, "admin", admin=True, expires_in_s=24 * 3600)
        print_banner(args.port, token, sample, settings.embedded, admin_client)
        if flower_auth:
            print(f"Flower: http://127.0.0.1:{args.flower_port}  (basic auth {flower_auth})", flush=True)
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"run_local: {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
    finally:
        shutdown(procs)
    return 0


ADMIN_CLIENT_NAME = "local-admin"


def local_admin_client(store, data_dir: Path) -> dict[str, str]:
    """The first admin client: created on first run, its credentials kept (mode 0600) in the data dir."""
    import json

    from service_gateway.clients import ADMIN_SCOPE, ALL_SERVICES, Clients
    path = data_dir / "admin-client.json"
    clients = Clients(store)
    try:
        saved = json.loads(path.read_text())
        client = clients.get(saved["client_id"])
        if client is not None and client.enabled:
            return saved
    except (OSError, ValueError, KeyError):
        pass
    existing = clients.find(ADMIN_CLIENT_NAME)
    made = (clients.rotate_secret(existing.client_id) if existing
            else clients.add(ADMIN_CLIENT_NAME, [ADMIN_SCOPE, ALL_SERVICES]))
    saved = {"client_id": made.client.client_id, "secret": made.secret}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(saved, fh)
    return saved


def load_queues(settings) -> list[str]:
    """Every queue of the deployment (one per service, and the webhooks'): the local worker takes them all."""
    from service_gateway.runtime import Runtime
    return Runtime(settings).queues


def make_sample(path: Path) -> None:
    """A 60-second 720p test clip with a tone, for the curl walk-through."""
    if not shutil.which("ffmpeg"):
        print("run_local: ffmpeg not found; no sample clip made (make run installs it)", file=sys.stderr)
        return
    print(f"making a 60 s 720p sample clip at {path} ...", flush=True)
    tmp = path.with_suffix(".part.mp4")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=60",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=60",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(tmp)], check=True)
    tmp.replace(path)


def wait_healthy(port: int, procs, stopping) -> bool:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if any(p.poll() is not None for _, p in procs):
            print("run_local: a process failed to start (see above)", file=sys.stderr)
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    print("run_local: the gateway did not become healthy in time", file=sys.stderr)
    return False


def print_banner(port: int, token: str, sample: Path, embedded: bool, admin_client: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{port}"
    mode = "embedded default (SQLite files)" if embedded else "configured broker/backend/store"
    print(f"""
Service Gateway is up at {base}  [{mode}]

Admin client (kept in the data dir's admin-client.json; `sg clients add` makes more):
  client_id: {admin_client["client_id"]}
  secret:    {admin_client["secret"]}
  curl -s -X POST {base}/auth/access-token -d client_id={admin_client["client_id"]} -d secret=...

Admin token (24 h), and the gateway's address:
  export TOKEN={token}
  export B={base}

Try it (paste the lines in another shell):
  curl -s -H "Authorization: Bearer $TOKEN" $B/services

  # submit a transcode of the 60 s 720p sample: 202 and the job's uuid
  UUID=$(curl -s -H "Authorization: Bearer $TOKEN" -X POST $B/transcode/annotate \\
         -d doc_url=file://{sample} -d preset=mp4-360p | sed -n 's/.*"uuid": *"\\([^"]*\\)".*/\\1/p'); echo $UUID

  # watch its progress rise, then SUCCESS with the result and its outputs
  for i in $(seq 60); do curl -s -H "Authorization: Bearer $TOKEN" "$B/transcode/status?uuid=$UUID" \\
                         | cut -c1-110; sleep 1; done

  # download the output
  curl -s -OJ -H "Authorization: Bearer $TOKEN" $B/jobs/$UUID/outputs/transcoded.mp4

  # submit a slower one and cancel it mid-way: REVOKED with code 109 within about a second, its ffmpeg gone
  U2=$(curl -s -H "Authorization: Bearer $TOKEN" -X POST $B/transcode/annotate \\
       -d doc_url=file://{sample} -d preset=webm-vp9 | sed -n 's/.*"uuid": *"\\([^"]*\\)".*/\\1/p'); sleep 3
  curl -s -X POST -H "Authorization: Bearer $TOKEN" "$B/transcode/cancel?uuid=$U2"
  curl -s -H "Authorization: Bearer $TOKEN" "$B/transcode/status?uuid=$U2"

Ctrl-C stops everything.
""", flush=True)


def shutdown(procs) -> None:
    # SIGTERM to each main process only: a warm shutdown lets the worker hand back its jobs.
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print("run_local: stopped")


if __name__ == "__main__":
    sys.exit(main())
