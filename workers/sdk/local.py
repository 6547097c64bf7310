"""Run one service in-process on an order, with no broker, backend or job store (`sg run-order`).

An order is a JSON object, as the Media Cloud AI SDK's source orders::

    {"service": "loudness", "file": "clip.wav", "params": {"silence_threshold_db": -50}}

with either ``file`` (a local path, relative to the order file) or ``doc_url`` (http/https).
This is how a worker author tries a new service, and how the accuracy script runs annotators.
"""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

from service_gateway.errors import JobError, SettingsError
from service_gateway.services import load_services
from service_gateway.settings import Settings, load_settings
from service_gateway.status import JobStatus

from .executor import Executor
from .service import Service


class ConsoleSink:
    """Collect a local job's states; print progress lines to ``stream`` when given."""

    def __init__(self, stream=None, on_progress: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.on_progress = on_progress
        self.result: dict[str, Any] | None = None
        self.error: JobError | None = None
        self.state: JobStatus = JobStatus.PENDING
        self.progress: list[int] = []

    def running(self, job_id: str, state: JobStatus, meta: dict[str, Any]) -> None:
        self.state = state
        current = int(meta.get("current", 0))
        if state is JobStatus.PROGRESS:
            self.progress.append(current)
            if self.on_progress:
                self.on_progress(current)
        if self.stream:
            print(f"{state.value:<8} {current:3d}%", file=self.stream, flush=True)

    def success(self, job_id: str, result: dict[str, Any]) -> None:
        self.state, self.result = JobStatus.SUCCESS, result
        if self.stream:
            print(f"{'SUCCESS':<8} 100%", file=self.stream, flush=True)

    def failed(self, job_id: str, state: JobStatus, error: JobError) -> None:
        self.state, self.error = state, error
        if self.stream:
            print(f"{state.value:<8} [{error.code}] {error.message}", file=self.stream, flush=True)


def read_order(path: Path) -> dict[str, Any]:
    """Load and check an order file; relative ``file`` paths are taken from the order's folder."""
    try:
        order = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"order {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(order, dict) or not isinstance(order.get("service"), str):
        raise SettingsError(f"order {path}: must be a JSON object with a \"service\"")
    if ("file" in order) == ("doc_url" in order):
        raise SettingsError(f"order {path}: give exactly one of \"file\" and \"doc_url\"")
    if "file" in order:
        order["file"] = str((path.parent / order["file"]).resolve())
    if not isinstance(order.get("params", {}), dict):
        raise SettingsError(f"order {path}: \"params\" must be a JSON object")
    return order


def run_order(order: dict[str, Any], *, settings: Settings | None = None, stream=None,
              on_progress: Callable[[int], None] | None = None) -> ConsoleSink:
    """Run ``order`` in this process and return the sink holding its result or error.

    ``file`` orders are allowed whatever SG_FILE_ROOTS says: the caller named the file itself.
    """
    settings = settings or load_settings()
    services = load_services(settings.service_modules)
    spec = services.get(order["service"])
    if not isinstance(spec, Service) or spec.run is None:
        raise SettingsError(f"unknown service {order['service']!r}; known: {', '.join(sorted(services))}")
    if "file" in order:
        path = Path(order["file"])
        doc_url = path.as_uri()
        settings.values["file_roots"] = [*settings.file_roots, str(path.parent)]
    else:
        doc_url = order["doc_url"]
    sink = ConsoleSink(stream, on_progress)
    payload = {"job_id": order.get("job_id") or str(uuid.uuid4()), "service": spec.name, "doc_url": doc_url,
               "params": order.get("params") or {}, "misc": order.get("misc") or {},
               "ann_doc_id": order.get("ann_doc_id")}
    Executor(settings, sink, store=None).execute(spec, payload)
    return sink


def main(order_path: str, output: str | None = None) -> int:
    """`sg run-order`: progress on stderr, the result (or error) as JSON on stdout or in ``output``."""
    order = read_order(Path(order_path))
    sink = run_order(order, stream=sys.stderr)
    body = sink.result if sink.result is not None else {"status": sink.state.value, **(sink.error.to_dict()
                                                                                         if sink.error else {})}
    text = json.dumps(body, indent=2)
    if output:
        Path(output).write_text(text + "\n")
    else:
        print(text)
    return 0 if sink.result is not None else 1
