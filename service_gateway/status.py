"""Job statuses as the public API names them."""
from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
    """Status of a job; the values are the public names of DESIGN.md."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    STORING = "STORING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"

    def is_finished(self) -> bool:
        """True for the statuses a job never leaves."""
        return self in FINISHED

    def is_running(self) -> bool:
        """True while a worker holds the job."""
        return self in RUNNING


FINISHED = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED, JobStatus.EXPIRED})
RUNNING = frozenset({JobStatus.RECEIVED, JobStatus.STARTED, JobStatus.PROGRESS, JobStatus.STORING,
                     JobStatus.RETRY})

#: How the result backend names RETRY for us (Celery's own RETRY state must hold an exception).
RETRYING = "RETRYING"
