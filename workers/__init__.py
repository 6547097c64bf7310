"""Workers: ``celery -A workers worker -Q <queue>`` and ``celery -A workers flower``.

The Celery app is built on first access (``workers.app``), so importing a service module for
its declaration (as the gateway does) does not build a worker. ``celery flower`` refuses to
serve without auth (see :mod:`workers.flower_auth`).
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("app", "celery"):
        from .flower_auth import refuse_open_flower
        from .sdk.app import worker_app
        app = worker_app()
        refuse_open_flower(app)
        return app
    raise AttributeError(name)
