"""The raw-Celery peer of the dispatch benchmarks: one no-op task, no gateway, no worker SDK.

    celery -A benchmarks.raw_celery worker -Q bench_raw -c 2      # with the same SG_* settings

The app is built by the gateway's own Celery factory (service_gateway.celery_app.make_celery)
from the same SG_* settings, so broker, result backend and Celery options are identical to the
gateway's (publisher confirms on RabbitMQ, task-sent events, prefetch 1, ack on start, JSON):
the difference the benchmarks measure is the gateway and the worker SDK, not Celery tuning.
The task writes its start and end time (time.time()) as its result.
"""
from __future__ import annotations

import time

from service_gateway.celery_app import make_celery, task_name
from service_gateway.settings import load_settings

#: The peer's own queue: the gateway's worker never consumes it.
RAW_QUEUE = "bench_raw"
RAW_SERVICE = "raw_noop"
RAW_TASK = task_name(RAW_SERVICE)

app = make_celery(load_settings(), {RAW_SERVICE: RAW_QUEUE})


@app.task(name=RAW_TASK, ignore_result=False)
def raw_noop(sent_at: float | None = None) -> dict:
    started = time.time()
    return {"start": started, "end": time.time(), "sent_at": sent_at}
