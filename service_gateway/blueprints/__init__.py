"""HTTP blueprints, one per area."""
from __future__ import annotations

from flask import current_app

from ..runtime import Runtime


def runtime() -> Runtime:
    """The runtime of the current app (settings, services, store, Celery)."""
    return current_app.extensions["service_gateway"]
