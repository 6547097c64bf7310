"""gunicorn settings for benchmarks/whatif.py: the shipped gunicorn.conf.py, plus the proposed fixes
applied in each process before the app is built (``post_fork`` runs before the app is loaded)."""
from pathlib import Path

exec((Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text())


def post_fork(server, worker):
    from benchmarks.whatif import apply
    apply("gateway")
