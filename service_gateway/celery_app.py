"""The one Celery factory, shared by the gateway (publishing) and the workers (consuming)."""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from .settings import Settings

#: Prefix of every task name: a service ``transcode`` runs as task ``sg.transcode``.
TASK_PREFIX = "sg."


def task_name(service: str) -> str:
    return TASK_PREFIX + service


def make_celery(settings: Settings, routes: dict[str, str]) -> Celery:
    """Create the Celery app for ``settings``, declaring one queue per service.

    Args:
        settings: resolved settings; an empty broker URL selects the embedded SQLite broker.
        routes: queue of each service, so that workers, the gateway and raw Celery clients
            (Flower's apply, ``send_task``) all route a service's task to its queue.
    """
    queues = sorted(set(routes.values()))
    app = Celery("service_gateway", set_as_current=False)
    broker = settings.broker
    transport_options: dict = {}
    if settings.embedded:
        _tune_embedded_transport(settings.embedded_polling_interval_s)
        # Passed through to create_engine: wait for SQLite's write lock instead of failing.
        transport_options = {"connect_args": {"timeout": 30}}
        settings.data_path.mkdir(parents=True, exist_ok=True)
    elif broker.startswith(("amqp", "pyamqp")):
        # 202 must mean the broker has the task: wait for RabbitMQ's publisher confirm.
        transport_options = {"confirm_publish": True}

    backend = settings.backend
    app.conf.update(
        broker_url=broker,
        result_backend=backend,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout_s,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acknowledged when it starts; the job store's lease then owns the job's recovery
        # (redelivery after a worker dies, on every broker): acks_late would leave a long job's
        # delivery unacknowledged past RabbitMQ's consumer_timeout, which kills the worker
        # (celery#6760). docs/reliability.md explains the trade.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        # A busy worker still holds one prefetched, unacknowledged message per process; past
        # consumer_timeout RabbitMQ closes the channel over it (PRECONDITION_FAILED), which Celery
        # treats as unrecoverable by default: the whole worker exits. Retrying channel errors makes
        # the consumer reconnect instead: the waiting message goes back to the queue and is delivered
        # again, and the running jobs (acknowledged at start) go on. docs/reliability.md.
        broker_channel_error_retry=True,
        task_queues=[Queue(q, routing_key=q) for q in queues],
        task_routes={task_name(service): {"queue": queue} for service, queue in routes.items()},
        task_create_missing_queues=True,
        result_expires=settings.result_expires_s,
        worker_send_task_events=True,
        # No task-sent events: workers send received/started/succeeded/failed, which is what Flower
        # shows; a sent event per submit cost ~20 % of a submit's wall time (the dispatcher's mutex).
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        # The SDK writes every state itself (STARTED, PROGRESS, STORING, SUCCESS, FAILURE, REVOKED).
        task_ignore_result=True,
        timezone="UTC",
    )
    for url in (broker, backend):
        if url.startswith(("sqla+sqlite:///", "db+sqlite:///")):
            _use_wal(url.split(":///", 1)[1])
    if backend.startswith("db+sqlite"):
        app.conf.database_engine_options = {"connect_args": {"timeout": 30}}
        app.conf.database_create_tables_at_setup = True
    return app


def _tune_embedded_transport(polling_interval_s: float) -> None:
    """Make the SQLAlchemy transport poll fast enough for ~150 ms dispatch.

    kombu's SQLAlchemy transport reads ``polling_interval`` only as a class attribute: passing
    it in ``broker_transport_options`` sends it on to ``create_engine``, which rejects it.
    """
    from kombu.transport import sqlalchemy as sqla_transport
    sqla_transport.Transport.polling_interval = polling_interval_s


def _use_wal(path: str) -> None:
    """Switch a SQLite file to WAL (persistent in the file): readers no longer block the writer."""
    import sqlite3
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
