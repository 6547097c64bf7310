"""Infrastructure needs (the original's "methods to evaluate infrastructure needs"): per queue, what waits,
what runs, who consumes, how fast it goes, and how many workers would drain it in time — with the reasoning."""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from .broker import queue_stats
from .runtime import Runtime
from .status import JobStatus
from .store import Job, utcnow

RUNNING = [s.value for s in (JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.STORING)]


def report(rt: Runtime) -> dict[str, Any]:
    """The infrastructure report of every queue (raises when the broker is unreachable)."""
    settings = rt.settings
    target_s, window_s = settings.infra_target_drain_s, settings.infra_window_s
    queues = queue_stats(rt)
    since = utcnow() - timedelta(seconds=window_s)
    online = rt.store.workers_online(within_s=3 * settings.worker_heartbeat_s)
    waiting = rt.store.count_waiting()
    with rt.store.engine.connect() as conn:
        running = dict(conn.execute(select(Job.service, func.count()).where(
            Job.finished_at.is_(None), Job.status.in_(RUNNING)).group_by(Job.service)).all())
        recent = {row.service: row for row in conn.execute(
            select(Job.service, func.count().label("done"), func.min(Job.started_at).label("first"))
            .where(Job.finished_at >= since, Job.status == JobStatus.SUCCESS.value).group_by(Job.service))}
        durations = _mean_durations(conn, rt.store.engine.dialect.name, since)
    out = []
    for service, spec in sorted(rt.services.items()):
        queue = spec.queue
        broker = queues.get(queue, {})
        # Waiting = accepted and not started. The broker counts only the messages ready in the queue;
        # a worker also holds prefetched messages (and retries due later) that have not started: the
        # job store counts those too. Both are exact; the backlog is the larger.
        ready = broker.get("messages") or 0
        backlog = max(ready, waiting.get(queue, 0))
        workers = [w for w in online if queue in w.queues.split(",")]
        processes = sum(w.concurrency for w in workers)
        done = recent[service].done if service in recent else 0
        mean_s = durations.get(service)
        now_running = running.get(service, 0)
        recommended, reasoning = _recommend(backlog, now_running, processes, mean_s, target_s)
        out.append({
            "service": service, "queue": queue, "backlog": backlog, "in_queue": ready,
            "held_by_workers": backlog - ready, "running": now_running,
            "consumers": broker.get("consumers"), "workers": [
                {"hostname": w.hostname, "concurrency": w.concurrency} for w in workers],
            "worker_processes": processes,
            "throughput_per_min": round(done / (window_s / 60), 3),
            "mean_duration_s": round(mean_s, 3) if mean_s is not None else None,
            "recommended_worker_processes": recommended, "reasoning": reasoning,
            "source": broker.get("source"),
        })
    return {"target_drain_s": target_s, "window_s": window_s, "queues": out}


def _mean_durations(conn, dialect: str, since) -> dict[str, float]:
    if dialect == "postgresql":
        seconds = func.extract("epoch", Job.finished_at - Job.started_at)
    else:
        seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    rows = conn.execute(select(Job.service, func.avg(seconds)).where(
        Job.finished_at >= since, Job.status == JobStatus.SUCCESS.value, Job.started_at.is_not(None))
        .group_by(Job.service)).all()
    return {service: float(avg) for service, avg in rows if avg is not None}


def _recommend(backlog: int, running: int, processes: int, mean_s: float | None,
               target_s: float) -> tuple[int, str]:
    """Worker processes needed so that the backlog and the running jobs are done within ``target_s``."""
    if backlog == 0 and running == 0:
        return 0, "nothing waits or runs: no worker is needed for now (keep one if jobs must start at once)"
    if mean_s is None:
        needed = max(1, processes, min(backlog + running, 4))
        return needed, (f"{backlog} waiting and {running} running, but no job finished in the window, so the "
                        f"duration is unknown; {needed} process(es) to start with, then ask again")
    work_s = (backlog + running) * mean_s
    needed = max(1, math.ceil(work_s / target_s))
    drain_now = (f"{work_s / processes:.0f} s with the {processes} process(es) online" if processes
                 else "never with no process online")
    return needed, (f"{backlog} waiting + {running} running jobs x {mean_s:.1f} s mean = {work_s:.0f} s of work; "
                    f"to finish within {target_s:.0f} s: {needed} process(es) (drains in {drain_now})")
