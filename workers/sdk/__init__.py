"""The worker SDK: write a service as one module (see docs/writing-a-service.md)."""
from service_gateway.errors import JobCancelled, JobError
from service_gateway.services import ParameterError

from .context import JobContext
from .service import Service

__all__ = ["JobCancelled", "JobContext", "JobError", "ParameterError", "Service"]
