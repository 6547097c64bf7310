"""gunicorn settings for the gateway: `gunicorn -c gunicorn.conf.py 'service_gateway:create_app()'`.

gunicorn reads ./gunicorn.conf.py by itself when started from this directory. Command-line flags
override it (e.g. `--bind 0.0.0.0:8000`, `--workers 4`). docs/operations.md explains the choices.
"""
import os
import shutil
from pathlib import Path

bind = os.environ.get("SG_BIND", "127.0.0.1:8000")
# Submit and status spend most of their time waiting on the broker, database and result backend:
# threads overlap that waiting. 2 processes x 8 threads fit a 2-core machine; scale processes with cores.
workers = int(os.environ.get("SG_GUNICORN_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("SG_GUNICORN_THREADS", "8"))
timeout = 60                # a request that blocks this long is a bug: the worker is restarted
graceful_timeout = 30       # on SIGTERM / HUP, in-flight requests (downloads) get this long to finish
keepalive = 5
# Trust no peer's X-Forwarded-* here (gunicorn trusts loopback's X-Forwarded-Proto by default): the
# gateway's SG_PROXY_HOPS (werkzeug ProxyFix) is the one place that decides whether they count.
forwarded_allow_ips = ""
max_requests = 20000        # recycle processes now and then (bounded memory growth), with jitter
max_requests_jitter = 2000
# One JSON object per request; X-Request-ID ties it to the gateway's and the worker's log lines.
accesslog = "-"
access_log_format = ('{"time": "%(t)s", "level": "INFO", "logger": "gunicorn.access", "remote": "%(h)s", '
                     '"method": "%(m)s", "path": "%(U)s", "status": %(s)s, "bytes": "%(B)s", '
                     '"duration_ms": %(M)s, "request_id": "%({x-request-id}o)s", "agent": "%(a)s"}')


def on_starting(server):
    """Give the gateway's processes one fresh Prometheus multiprocess directory (before they import it)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        data_dir = Path(os.environ.get("SG_DATA_DIR", "./var")).resolve()
        path = data_dir / "prometheus" / f"gateway-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def child_exit(server, worker):
    """Drop a dead process's live gauges from the multiprocess files."""
    from service_gateway.metrics import mark_process_dead
    mark_process_dead(worker.pid)
