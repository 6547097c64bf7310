"""noop: a benchmark-only service that does nothing (or sleeps), for dispatch and throughput figures.

Not a first-party service: the benchmarks load it next to the real ones with
``SG_SERVICE_MODULES=<the defaults>,benchmarks.noop_service`` (and the checkout on PYTHONPATH),
so the gateway, the SDK executor and the worker run it exactly as any other service: JWT,
validation, job store, publish with confirm, claim and lease, STARTED and SUCCESS writes, usage.

The handler's result carries ``handler_started``: the wall-clock time (time.time()) at which the
service's own function was entered, so the dispatch benchmark can also tell SDK time apart.
"""
from __future__ import annotations

import time

from workers.sdk import JobContext, Service

service = Service(
    name="noop",
    version="1.0.0",
    description="Benchmark only: returns at once, or after sleep_s seconds while reporting progress.",
    parameters={
        "type": "object",
        "properties": {
            "sleep_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 0,
                        "description": "Stay running this long (a job to poll while it runs)."},
        },
    },
)


@service.handler
def run(job: JobContext) -> dict:
    started = time.time()
    deadline = time.monotonic() + float(job.params.get("sleep_s") or 0)
    while time.monotonic() < deadline:
        job.check_cancelled()
        remaining = deadline - time.monotonic()
        job.progress(99 - 98 * max(0.0, remaining) / max(float(job.params["sleep_s"]), 1e-9))
        time.sleep(min(0.2, max(0.0, remaining)))
    return {"service": service.name, "version": service.version, "doc_url": job.doc_url,
            "handler_started": started}
