"""Service Gateway: a REST gateway in front of a Celery cluster for long media jobs.

``gunicorn 'service_gateway:create_app()'`` serves it. The import is kept light (Flask and
Celery load only when an app is made) so the light client and the workers can import the
package's core without the web stack.
"""
from __future__ import annotations

__version__ = "0.1.0"


def create_app(test_config: dict | None = None):
    """Create the Flask app; ``test_config`` holds setting overrides by name (see settings.py)."""
    from .app import create_app as _create_app
    return _create_app(test_config)
