"""The workers' Celery app made the default app, for running Flower as the benchmarks' peer.

    celery -A benchmarks.flower_app flower --port=5555

Flower 2.2's ``GET /api/task/result/<id>`` reads ``AsyncResult(taskid)`` without passing its app,
so it uses Celery's *default* app; service_gateway.celery_app.make_celery builds the app with
``set_as_current=False``, and under ``celery -A workers flower`` that route answers 503 ("result
backend is not configured"). Making the same app the default here lets Flower read our result
backend, as a deployment would after the fix proposed in docs/benchmarks.md.
"""
from __future__ import annotations

from workers import app

app.set_default()
app.set_current()
