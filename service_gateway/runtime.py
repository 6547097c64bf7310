"""The runtime: settings, service registry, job store and Celery app, built once per process."""
from __future__ import annotations

from functools import cached_property

from celery import Celery

from .celery_app import make_celery
from .clients import Clients
from .services import ServiceSpec, load_services
from .settings import Settings
from .store import JobStore


#: Webhook deliveries run as task sg.webhook on their own queue (any worker may take it).
WEBHOOK_TASK, WEBHOOK_QUEUE = "webhook", "webhooks"


class Runtime:
    """Everything a gateway or worker process talks to, wired from one :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: dict[str, ServiceSpec] = load_services(settings.service_modules)
        self.store = JobStore(settings.database)
        self.clients = Clients(self.store)

    @property
    def queues(self) -> list[str]:
        """Every queue a worker of this deployment may consume: one per service, and the webhooks'."""
        return sorted({spec.queue for spec in self.services.values()} | {WEBHOOK_QUEUE})

    @cached_property
    def pipelines(self):
        """The named pipelines (settings file and /admin/pipelines); see service_gateway.pipelines."""
        from .pipelines import Pipelines
        return Pipelines(self)

    @cached_property
    def succeeded(self):
        """Finished jobs remembered for status reads (see service_gateway.jobs.SucceededJobs)."""
        from .jobs import SucceededJobs
        return SucceededJobs(ttl_s=self.settings.status_cache_s)

    @cached_property
    def celery(self) -> Celery:
        routes = {name: spec.queue for name, spec in self.services.items()}
        routes[WEBHOOK_TASK] = WEBHOOK_QUEUE
        return make_celery(self.settings, routes)
