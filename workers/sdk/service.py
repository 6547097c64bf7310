"""Declaring a service: its contract (name, version, parameters) and the function that runs it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from service_gateway.services import ServiceSpec

from .context import JobContext

Handler = Callable[[JobContext], dict[str, Any]]


@dataclass
class Service(ServiceSpec):
    """A service: the :class:`ServiceSpec` contract plus the function that does the work.

    Declare it at module level and keep heavy imports inside the function::

        service = Service(name="probe", version="1.0.0", description="...", parameters={...})

        @service.handler
        def run(job: JobContext) -> dict:
            import ffmpeg
            ...
    """

    run: Handler | None = None

    def handler(self, fn: Handler) -> Handler:
        """Register ``fn`` as the function that runs a job of this service."""
        self.run = fn
        return fn
