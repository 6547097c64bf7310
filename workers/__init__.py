"""Workers: ``celery -A workers worker -Q <queue>`` and ``celery -A workers flower``.

The Celery app is built on first access (``workers.app``), so importing a service module for
its declaration (as the gateway does) does not build a worker.
"""
from __future__ import annotations


def __getattr__(name: str):
    if name in ("app", "celery"):
        from .sdk.app import worker_app
        return worker_app()
    raise AttributeError(name)
