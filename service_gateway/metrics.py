"""Prometheus metrics (prometheus_client), safe under gunicorn's several processes and in workers.

Counters and histograms live in each process; with ``PROMETHEUS_MULTIPROC_DIR`` set (the shipped
gunicorn.conf.py and the worker do it) every process writes its values to files there and the
collector of ``GET /metrics`` adds them up, so the figures are the service's, not one process's.
What describes shared state — jobs finished and in flight, queue depth and consumers — is read
from the job store and the broker when Prometheus scrapes (cached for a few seconds), so every
gateway process reports the same truth, whichever worker ran the jobs. Job durations and queue
waits are observed by the workers that run them (exported on SG_WORKER_METRICS_PORT).

The metric names are a contract with deploy/grafana/service-gateway.json.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

#: Request latencies worth telling apart: submit and status answer in milliseconds.
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Jobs run from seconds to hours.
JOB_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200)
#: Shared-state gauges are recomputed at most this often per process.
SCRAPE_CACHE_S = 5.0

JOBS_SUBMITTED = Counter("sg_jobs_submitted", "Jobs accepted (202) by service.", ["service"])
HTTP_DURATION = Histogram("sg_http_request_duration_seconds", "Gateway request latency by route template.",
                          ["route", "method", "status"], buckets=LATENCY_BUCKETS_S)
JOB_DURATION = Histogram("sg_job_duration_seconds", "Run time of a job in its worker.", ["service", "status"],
                         buckets=JOB_BUCKETS_S)
QUEUE_WAIT = Histogram("sg_job_queue_wait_seconds", "From accepted to started, by service.", ["service"],
                       buckets=JOB_BUCKETS_S)
QUOTA_REFUSALS = Counter("sg_quota_refusals", "Submits refused by a quota (429).", ["quota"])
AUTH_FAILURES = Counter("sg_auth_failures", "Requests refused for their token or credentials.", ["reason"])


def init_app(app, rt) -> None:
    """Time every request by route template, and keep the shared-state collector for /metrics."""
    from flask import g, request
    from prometheus_client import CollectorRegistry

    shared = CollectorRegistry(auto_describe=False)
    shared.register(SharedStateCollector(lambda: read_shared_state(rt)))
    app.extensions["sg_metrics"] = shared

    @app.before_request
    def _start_timer() -> None:
        g._sg_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.pop("_sg_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
            HTTP_DURATION.labels(route, request.method, str(response.status_code)).observe(
                time.perf_counter() - started)
        return response


def exposition(app) -> bytes:
    """The text Prometheus scrapes: every process's counters and histograms, then the shared state."""
    from prometheus_client import generate_latest
    return generate_latest(registry()) + generate_latest(app.extensions["sg_metrics"])


def registry():
    """The registry to expose: all processes' values in multiprocess mode, else this process's."""
    from prometheus_client import CollectorRegistry, multiprocess
    from prometheus_client.registry import REGISTRY
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


class SharedStateCollector:
    """Gauges read from shared state at scrape time: jobs in flight, queue depth and consumers."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _state(self) -> dict[str, Any]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > SCRAPE_CACHE_S:
                try:
                    self._cached = (time.monotonic(), self.read())
                except Exception as exc:   # a scrape must not fail because the broker is down
                    log.warning("metrics: shared state unreadable (%s)", exc.__class__.__name__)
                    self._cached = (time.monotonic(), {"in_flight": {}, "queues": {}, "up": 0})
            return self._cached[1]

    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        state = self._state()
        finished = CounterMetricFamily("sg_jobs_finished", "Jobs finished, by service and final status.",
                                       labels=["service", "status"])
        for (service, status), count in sorted(state.get("finished", {}).items()):
            finished.add_metric([service, status], count)
        yield finished
        in_flight = GaugeMetricFamily("sg_jobs_in_flight", "Jobs accepted and not finished, by service.",
                                      labels=["service"])
        for service, count in sorted(state["in_flight"].items()):
            in_flight.add_metric([service], count)
        depth = GaugeMetricFamily("sg_queue_depth", "Messages waiting in each queue (from the broker).",
                                  labels=["queue"])
        consumers = GaugeMetricFamily("sg_queue_consumers", "Consumers of each queue (from the broker).",
                                      labels=["queue"])
        for queue, figures in sorted(state["queues"].items()):
            if figures.get("messages") is not None:
                depth.add_metric([queue], figures["messages"])
            if figures.get("consumers") is not None:
                consumers.add_metric([queue], figures["consumers"])
        up = GaugeMetricFamily("sg_dependencies_up", "1 when the broker and job store answered the last scrape.")
        up.add_metric([], state.get("up", 1))
        yield from (in_flight, depth, consumers, up)


def observe_job(service: str, status: str, run_s: float, queue_wait_s: float | None) -> None:
    """Record a finished job's run time and queue wait (called in the worker process that ran it)."""
    JOB_DURATION.labels(service, status).observe(max(0.0, run_s))
    if queue_wait_s is not None:
        QUEUE_WAIT.labels(service).observe(max(0.0, queue_wait_s))


def mark_process_dead(pid: int) -> None:
    """gunicorn's child_exit hook: drop a dead process's live gauges from the multiprocess files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def read_shared_state(rt) -> dict[str, Any]:
    """Jobs finished and in flight by service (job store), queue depth and consumers (broker)."""
    from sqlalchemy import func, select

    from .broker import queue_stats
    from .store import Job
    query = (select(Job.service, Job.status, Job.finished_at.is_(None).label("open"), func.count())
             .group_by(Job.service, Job.status, "open"))
    finished: dict[tuple[str, str], int] = {}
    in_flight: dict[str, int] = {service: 0 for service in rt.services}
    with rt.store.engine.connect() as conn:
        for service, status, is_open, count in conn.execute(query):
            if is_open:
                in_flight[service] = in_flight.get(service, 0) + count
            else:
                finished[(service, status)] = finished.get((service, status), 0) + count
    up = 1
    try:
        queues = queue_stats(rt)
    except Exception as exc:
        log.warning("metrics: broker unreadable (%s)", exc.__class__.__name__)
        queues, up = {}, 0
    return {"finished": finished, "in_flight": in_flight, "queues": queues, "up": up}
