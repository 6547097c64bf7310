"""What the broker knows about our queues: messages waiting and consumers, exactly where it can tell.

RabbitMQ answers a passive ``queue.declare`` with both counts. The embedded SQLite broker has
no consumers to ask about: its waiting messages are counted in its table, and its consumers are
the worker processes that said (in the job store heartbeat) they consume the queue.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Any

from .runtime import Runtime

log = logging.getLogger(__name__)


def queue_stats(rt: Runtime) -> dict[str, dict[str, Any]]:
    """``{queue: {"messages": n, "consumers": n, "source": "..."}}`` for every service queue.

    Raises:
        OSError, kombu/amqp errors: the broker is unreachable (callers decide what that means).
    """
    if rt.settings.embedded:
        return _embedded(rt)
    if rt.settings.broker.startswith(("amqp", "pyamqp")):
        return _rabbitmq(rt)
    return {q: {"messages": None, "consumers": None, "source": "unsupported broker"} for q in rt.queues}


def _rabbitmq(rt: Runtime) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with rt.celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        channel = conn.default_channel
        for queue in rt.queues:
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except Exception as exc:        # NOT_FOUND closes the channel: the queue was never declared
                log.info("queue %s not declared yet (%s)", queue, exc.__class__.__name__)
                channel = conn.channel()
                messages, consumers = 0, 0
            out[queue] = {"messages": int(messages), "consumers": int(consumers), "source": "rabbitmq"}
    return out


def _embedded(rt: Runtime) -> dict[str, dict[str, Any]]:
    path = rt.settings.broker.split(":///", 1)[1]
    counts: dict[str, int] = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            counts = dict(conn.execute(
                "SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                "ON m.queue_id = q.id AND m.visible = 1 GROUP BY q.name").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        pass    # no broker file or table yet: nothing waits
    online = rt.store.workers_online(within_s=3 * rt.settings.worker_heartbeat_s)
    return {q: {"messages": counts.get(q, 0),
                "consumers": sum(w.concurrency for w in online if q in w.queues.split(",")),
                "source": "embedded (messages from the broker file, consumers from worker heartbeats)"}
            for q in rt.queues}
