"""Named pipelines: ordered stages of service steps, run as one job.

A pipeline is defined in the settings file (``[pipelines.<name>]``) or through ``/admin/pipelines``
and is used like a service: ``POST /<pipeline>/annotate``, status, cancel. Its definition::

    {"description": "...",
     "steps": [
        {"name": "small", "service": "transcode", "params": {"preset": "mp4-360p"}},
        {"parallel": [{"service": "transitions"}, {"service": "speech"},
                      {"service": "faces", "params": {"fps": 2}, "weight": 2}]}]}

Each entry of ``steps`` is a stage: one step, or a ``parallel`` list of steps run at once on
the same input. A stage starts when the one before it has succeeded. A step's ``input`` is
``"auto"`` (default: the first audio/video output of the stage before when that stage is one
step that made one, e.g. a transcode; otherwise the pipeline's document), ``"doc"``, or the name
of an earlier step (its first audio/video output) or ``"<step>/<output name>"``.

How it runs. Every step is an ordinary job of its service (its own row in the job store, with
``parent_uuid`` pointing at the pipeline's row and a uuid derived from the pipeline's and the
step's name), so steps get the claim, lease, retry, cancel and usage machinery of any job. A
stage's steps are published together as a Celery canvas ``group``. The continuation is kept in
the job store, not in chord callbacks carried by messages: when a step ends, its worker calls
:func:`advance`, which looks at the pipeline's rows and either waits, starts the next stage,
fails the pipeline with the failed step's code (cancelling its running siblings), or writes the
merged result. :func:`advance` is idempotent (step uuids are deterministic, final writes are
compare-and-set), so two parallel steps ending at once, or the sweeper calling it again for a
pipeline whose worker died between a step's end and the advance, do no harm.
"""
from __future__ import annotations

import logging
import re
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .errors import APIError, JobError, SettingsError
from .services import ParameterError, ServiceSpec
from .status import JobStatus

if TYPE_CHECKING:
    from .runtime import Runtime
    from .store import Job

log = logging.getLogger(__name__)

#: The queue name recorded for a pipeline's own row (no worker consumes it: its steps run on theirs).
PIPELINE_QUEUE = "pipelines"
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
STEP_NAMESPACE = uuidlib.UUID("6f1c7c52-6a53-4b7a-9a8e-3c1d1f5a9e10")
MAX_STEPS = 20
DEFINITION_KEYS = {"description", "steps"}
STEP_KEYS = {"name", "service", "params", "input", "weight"}


@dataclass
class Step:
    name: str
    service: str
    params: dict[str, Any]
    input: str = "auto"
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "service": self.service, "params": self.params, "input": self.input,
                "weight": self.weight}


@dataclass
class PipelineSpec(ServiceSpec):
    """A pipeline, shaped as a service so that the submit, status and cancel routes take it as one."""

    stages: list[list[Step]] = field(default_factory=list)
    #: "settings" (read-only through the API) or "admin".
    source: str = "admin"
    step_services: dict[str, ServiceSpec] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> list[Step]:
        return [step for stage in self.stages for step in stage]

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Per-step overrides ``{"<step>": {...}}``: each checked against its step's service schema."""
        unknown = sorted(set(params) - {s.name for s in self.steps})
        if unknown:
            raise ParameterError(unknown[0], f"is not a step of pipeline {self.name!r}; its steps are "
                                             f"{', '.join(s.name for s in self.steps)}")
        out: dict[str, Any] = {}
        for step in self.steps:
            override = params.get(step.name, {})
            if not isinstance(override, dict):
                raise ParameterError(step.name, "must be an object of that step's parameters")
            try:
                out[step.name] = self.step_services[step.service].validate({**step.params, **override})
            except ParameterError as exc:
                raise ParameterError(f"{step.name}.{exc.field}" if exc.field else step.name,
                                     str(exc).split(": ", 1)[-1], missing=exc.missing) from None
        return out

    def coerce(self, raw: dict[str, str]) -> dict[str, Any]:
        """Form values of a pipeline are JSON objects (``small={"preset":"webm-vp9"}``)."""
        import json
        out: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                out[key] = json.loads(value)
            except ValueError:
                raise ParameterError(key, "must be a JSON object of that step's parameters") from None
        return out

    def definition(self) -> dict[str, Any]:
        steps: list[Any] = []
        for stage in self.stages:
            if len(stage) == 1 and not getattr(stage, "parallel", False):
                steps.append(stage[0].to_dict())
            else:
                steps.append({"parallel": [s.to_dict() for s in stage]})
        return {"description": self.description, "steps": steps}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "pipeline", "source": self.source, **self.definition()}

    def snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        """What a pipeline job keeps: its stages with the parameters in force (edits do not touch it)."""
        return {"name": self.name, "stages": [[dict(s.to_dict(), params=params[s.name]) for s in stage]
                                              for stage in self.stages]}


class Stage(list):
    """A stage written as ``{"parallel": [...]}`` (kept as such even with one step)."""

    parallel = True


def parse(name: str, raw: Any, services: dict[str, ServiceSpec], source: str = "admin") -> PipelineSpec:
    """Check a definition and return its :class:`PipelineSpec`.

    Raises:
        ParameterError: naming the field at fault (e.g. ``steps[1].parallel[0].service``).
    """
    if not isinstance(name, str) or not NAME.match(name):
        raise ParameterError("name", "must be 1-63 of a-z, 0-9, _ and -, starting with a letter")
    if name in services:
        raise ParameterError("name", f"{name!r} is a service")
    if not isinstance(raw, dict):
        raise ParameterError("", "a pipeline is a JSON object: {\"description\", \"steps\": [...]}")
    unknown = sorted(set(raw) - DEFINITION_KEYS - {"name"})
    if unknown:
        raise ParameterError(unknown[0], "unknown field; a pipeline has description and steps")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ParameterError("description", "must be a string")
    entries = raw.get("steps")
    if not isinstance(entries, list) or not entries:
        raise ParameterError("steps", "is required: a non-empty list of steps and {\"parallel\": [...]} stages",
                             missing=entries is None)
    stages: list[list[Step]] = []
    seen: dict[str, Step] = {}
    for i, entry in enumerate(entries):
        where = f"steps[{i}]"
        if isinstance(entry, dict) and "parallel" in entry:
            if set(entry) != {"parallel"} or not isinstance(entry["parallel"], list) or not entry["parallel"]:
                raise ParameterError(where, "a parallel stage is {\"parallel\": [step, ...]} with at least one step")
            stage: list[Step] = Stage(_step(f"{where}.parallel[{j}]", item, services, seen, stages)
                                      for j, item in enumerate(entry["parallel"]))
        else:
            stage = [_step(where, entry, services, seen, stages)]
        for step in stage:
            seen[step.name] = step
        stages.append(stage)
    if len(seen) > MAX_STEPS:
        raise ParameterError("steps", f"at most {MAX_STEPS} steps")
    properties = {s.name: {"type": "object", "description": f"Overrides of step {s.name!r} ({s.service}) "
                                                            f"parameters; defaults: {s.params}"}
                  for s in seen.values()}
    return PipelineSpec(name=name, version="pipeline", description=description or f"pipeline {name}",
                        parameters={"type": "object", "properties": properties, "additionalProperties": False},
                        queue=PIPELINE_QUEUE, stages=stages, source=source,
                        step_services={s.service: services[s.service] for s in seen.values()})


def _step(where: str, raw: Any, services: dict[str, ServiceSpec], seen: dict[str, Step],
          before: list[list[Step]]) -> Step:
    if not isinstance(raw, dict):
        raise ParameterError(where, "a step is an object: {\"service\", \"params\", \"name\", \"input\", \"weight\"}")
    unknown = sorted(set(raw) - STEP_KEYS)
    if unknown:
        raise ParameterError(f"{where}.{unknown[0]}", "unknown field; a step has service, params, name, input, weight")
    service = raw.get("service")
    if service not in services:
        raise ParameterError(f"{where}.service", f"unknown service {service!r}; GET /services lists them",
                             missing=service is None)
    name = raw.get("name", service)
    if not isinstance(name, str) or not NAME.match(name):
        raise ParameterError(f"{where}.name", "must be 1-63 of a-z, 0-9, _ and -, starting with a letter")
    if name in seen or any(name == s.name for s in _flat(before)):
        raise ParameterError(f"{where}.name", f"step name {name!r} is used twice; name one of them")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ParameterError(f"{where}.params", "must be an object")
    try:
        services[service].validate(params)
    except ParameterError as exc:
        raise ParameterError(f"{where}.params.{exc.field}" if exc.field else f"{where}.params",
                             str(exc).split(": ", 1)[-1], missing=exc.missing) from None
    source = raw.get("input", "auto")
    earlier = {s.name for s in _flat(before)}
    if not isinstance(source, str) or (source not in ("auto", "doc") and source.split("/", 1)[0] not in earlier):
        raise ParameterError(f"{where}.input", "must be auto, doc, or the name of a step of an earlier stage "
                                               "(optionally /<output name>)")
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1000:
        raise ParameterError(f"{where}.weight", "must be a number in (0, 1000]: the step's share of the progress")
    return Step(name=name, service=service, params=params, input=source, weight=float(weight))


def _flat(stages: list[list[Step]]) -> list[Step]:
    return [s for stage in stages for s in stage]


def from_settings(extra: dict[str, Any], services: dict[str, ServiceSpec]) -> dict[str, PipelineSpec]:
    """The ``[pipelines.<name>]`` tables of the settings file.

    Raises:
        SettingsError: a definition is not valid; the message names the pipeline and the field.
    """
    tables = extra.get("pipelines", {})
    if not isinstance(tables, dict):
        raise SettingsError("[pipelines]: must be tables [pipelines.<name>]")
    out = {}
    for name, raw in tables.items():
        try:
            out[name] = parse(name, raw, services, source="settings")
        except ParameterError as exc:
            raise SettingsError(f"[pipelines.{name}]: {exc}") from None
    return out


class Pipelines:
    """The pipelines in force: the settings file's, then the admin-defined ones kept in the job store.

    Admin edits are visible to every gateway and worker process at once: a lookup by name reads
    the store (one indexed row); the settings' pipelines are parsed once.
    """

    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.configured = from_settings(rt.settings.extra, rt.services)

    def get(self, name: str) -> PipelineSpec | None:
        if name in self.configured:
            return self.configured[name]
        row = self.rt.store.get_pipeline(name)
        if row is None:
            return None
        try:
            return parse(name, row["definition"], self.rt.services)
        except ParameterError as exc:    # a service it uses was removed since: shown, not runnable
            log.error("pipeline %s is no longer valid: %s", name, exc)
            return None

    def all(self) -> list[PipelineSpec]:
        found = dict(self.configured)
        for row in self.rt.store.list_pipelines():
            if row["name"] not in found:
                try:
                    found[row["name"]] = parse(row["name"], row["definition"], self.rt.services)
                except ParameterError as exc:
                    log.error("pipeline %s is no longer valid: %s", row["name"], exc)
        return [found[name] for name in sorted(found)]

    def names(self) -> set[str]:
        return set(self.configured) | {row["name"] for row in self.rt.store.list_pipelines()}

    def save(self, name: str, raw: Any, *, create: bool) -> PipelineSpec:
        """Create (``create``) or replace an admin pipeline; 409/404 as the route documents."""
        if name in self.configured:
            raise APIError(218, f"pipeline {name!r} is defined in the settings file; change it there")
        try:
            spec = parse(name, raw, self.rt.services)
        except ParameterError as exc:
            raise APIError(206 if exc.missing else 204, f"invalid pipeline: {exc}") from None
        definition = spec.definition()
        if create:
            if not self.rt.store.add_pipeline(name, definition):
                raise APIError(216, f"a pipeline named {name!r} exists already; PUT /admin/pipelines/{name} "
                                    "replaces it")
        elif not self.rt.store.replace_pipeline(name, definition):
            raise APIError(217, f"no pipeline {name!r}")
        return spec

    def delete(self, name: str) -> None:
        if name in self.configured:
            raise APIError(218, f"pipeline {name!r} is defined in the settings file; change it there")
        if not self.rt.store.delete_pipeline(name):
            raise APIError(217, f"no pipeline {name!r}")


# -- running ---------------------------------------------------------------------------------------
def step_uuid(pipeline_uuid: str, step: str) -> str:
    return str(uuidlib.uuid5(STEP_NAMESPACE, f"{pipeline_uuid}/{step}"))


def _stages(job: "Job") -> list[list[dict[str, Any]]]:
    return (job.pipeline or {}).get("stages", [])


def _is_media(output: dict[str, Any]) -> bool:
    return str(output.get("content_type", "")).startswith(("video/", "audio/"))


def _input_of(step: dict[str, Any], index: int, stages: list[list[dict[str, Any]]],
               results: dict[str, Any]) -> dict[str, str] | None:
    """The output a step reads ({"job", "name"}), or None for the pipeline's document."""
    source = step.get("input", "auto")
    if source == "doc":
        return None
    if source == "auto":
        if index == 0 or len(stages[index - 1]) != 1:
            return None
        source = stages[index - 1][0]["name"]
    step_name, _, output_name = source.partition("/")
    result = results.get(step_name) or {}
    outputs = [o for o in result.get("outputs", []) if isinstance(o, dict)]
    chosen = next((o for o in outputs if o.get("name") == output_name), None) if output_name else \
        next((o for o in outputs if _is_media(o)), None)
    if chosen is None:
        if step.get("input", "auto") == "auto":
            return None
        raise JobError(306, f"step {step['name']!r}: step {step_name!r} has no "
                            f"{'output ' + repr(output_name) if output_name else 'audio or video output'}")
    return {"job": result["_uuid"], "name": chosen["name"]}


def _result_of(rt: "Runtime", row: "Job") -> dict[str, Any]:
    meta = rt.celery.backend.get_task_meta(row.uuid)
    result = meta.get("result") if meta.get("status") == JobStatus.SUCCESS.value else None
    return dict(result, _uuid=row.uuid) if isinstance(result, dict) else {"_uuid": row.uuid}


def start(rt: "Runtime", pipeline: "Job") -> None:
    """Create and publish the first stage (the gateway, at submit). Raises Unavailable when not published."""
    _start_stage(rt, pipeline, 0, {}, strict=True)


def advance(rt: "Runtime", pipeline_uuid: str) -> None:
    """Move a pipeline on after one of its steps ended (or when the sweeper finds it stalled)."""
    pipeline = rt.store.get(pipeline_uuid)
    if pipeline is None or pipeline.finished_at is not None or not pipeline.pipeline:
        return
    stages = _stages(pipeline)
    children = {row.step: row for row in rt.store.children(pipeline_uuid)}
    results: dict[str, Any] = {}
    for index, stage in enumerate(stages):
        rows = [children.get(step["name"]) for step in stage]
        if any(row is None for row in rows):
            if pipeline.cancel_requested:
                _finish(rt, pipeline, JobStatus.REVOKED, JobError(109, "cancelled by request"))
            else:
                _start_stage(rt, pipeline, index, results)
            return
        ended_badly = [row for row in rows if row.finished_at is not None and row.status != JobStatus.SUCCESS.value]
        if ended_badly:
            bad = ended_badly[0]
            for row in rows:
                if row.finished_at is None:
                    rt.store.request_cancel(row.uuid)
            state = JobStatus.REVOKED if bad.status == JobStatus.REVOKED.value else JobStatus.FAILURE
            message = bad.error_message or bad.status
            _finish(rt, pipeline, state, JobError(bad.error_code or 306,
                                                  f"step {bad.step!r} ({bad.service}): {message}"[:1000]))
            return
        if any(row.finished_at is None for row in rows):
            return
        for row in rows:
            results[row.step] = _result_of(rt, row)
    _finish(rt, pipeline, JobStatus.SUCCESS, result=merged(pipeline, stages, results))


def merged(pipeline: "Job", stages: list[list[dict[str, Any]]], results: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's result: every step's result in order, and all their outputs."""
    steps, outputs = [], []
    for stage in stages:
        for step in stage:
            result = dict(results.get(step["name"]) or {})
            step_id = result.pop("_uuid", None)
            steps.append({"name": step["name"], "service": step["service"], "uuid": step_id,
                          "status": JobStatus.SUCCESS.value, "result": result})
            outputs += [dict(o, step=step["name"]) for o in result.get("outputs", []) if isinstance(o, dict)]
    return {"pipeline": (pipeline.pipeline or {}).get("name", pipeline.service), "doc_url": pipeline.doc_url,
            "steps": steps, "outputs": outputs}


def _start_stage(rt: "Runtime", pipeline: "Job", index: int, results: dict[str, Any], strict: bool = False) -> None:
    from celery import group

    from .celery_app import task_name
    from .jobs import PUBLISH_ERRORS, task_payload
    from .errors import Unavailable
    from .store import QUEUED, utcnow

    stages = _stages(pipeline)
    try:
        inputs = [_input_of(step, index, stages, results) for step in stages[index]]
    except JobError as exc:
        _finish(rt, pipeline, JobStatus.FAILURE, exc)
        return
    created = []
    now = utcnow()
    for step, source in zip(stages[index], inputs):
        service = rt.services[step["service"]]
        row = dict(uuid=step_uuid(pipeline.uuid, step["name"]), owner=pipeline.owner, service=service.name,
                   queue=service.queue, status=JobStatus.PENDING.value, doc_url=pipeline.doc_url,
                   params=step["params"], misc={"pipeline": pipeline.service, "step": step["name"],
                                                **({"input": source} if source else {})},
                   progress=0, cancel_requested=False, parent_uuid=pipeline.uuid, step=step["name"],
                   created_at=now,
                   # A queue lease: if the message below is lost, the sweeper publishes the step again.
                   lease_owner=QUEUED, lease_until=now + timedelta(seconds=rt.settings.job_lease_s * 2))
        if rt.store.add_if_absent(**row):
            created.append(row)
    if not created:
        return          # another advance started this stage
    if index == 0:
        rt.store.set_status(pipeline.uuid, JobStatus.STARTED)
    signatures = [rt.celery.signature(task_name(row["service"]), args=[task_payload(row)],
                                      options={"task_id": row["uuid"], "queue": row["queue"]}) for row in created]
    try:
        group(signatures).apply_async(retry=True, retry_policy={"max_retries": 1, "interval_start": 0,
                                                                "interval_step": 0.5, "interval_max": 0.5})
    except PUBLISH_ERRORS as exc:
        if strict:
            for row in created:
                rt.store.remove(row["uuid"])
            raise Unavailable("the broker", rt.settings.retry_after_s) from exc
        log.error("stage %d not published now (%s); the sweeper will", index, exc.__class__.__name__,
                  extra={"job_id": pipeline.uuid})
    log.info("pipeline stage %d started: %s", index, ", ".join(r["step"] for r in created),
             extra={"job_id": pipeline.uuid})


def _finish(rt: "Runtime", pipeline: "Job", state: JobStatus, error: JobError | None = None,
            result: dict[str, Any] | None = None) -> None:
    from .jobs import notify_webhook
    if state is JobStatus.SUCCESS:
        # The result first (the status route reads SUCCESS from the backend), then the record.
        rt.celery.backend.store_result(pipeline.uuid, result, JobStatus.SUCCESS.value)
        won = rt.store.finish(pipeline.uuid, state, progress=100)
    else:
        assert error is not None
        won = rt.store.finish(pipeline.uuid, state, progress=pipeline.progress, error=(error.code, error.message))
        if won:
            rt.celery.backend.store_result(pipeline.uuid, JobError(error.code, error.message), state.value)
    if won:
        log.info("pipeline %s", state.value, extra={"job_id": pipeline.uuid})
        if pipeline.callback_url:
            notify_webhook(rt, pipeline.uuid)


def cancel(rt: "Runtime", pipeline: "Job") -> None:
    """Stop a pipeline: REVOKED now; its running step stops within ~1 s, the rest never start."""
    rt.store.request_cancel(pipeline.uuid)
    _finish(rt, pipeline, JobStatus.REVOKED, JobError(109, "cancelled by request"))
    for row in rt.store.children(pipeline.uuid):
        if row.finished_at is None:
            rt.store.request_cancel(row.uuid)


def running_status(rt: "Runtime", pipeline: "Job", read_meta) -> dict[str, Any]:
    """The status body of an unfinished pipeline: weighted progress, the current step(s), every step."""
    stages = _stages(pipeline)
    children = {row.step: row for row in rt.store.children(pipeline.uuid)}
    total = sum(step.get("weight", 1) for stage in stages for step in stage) or 1
    done, steps, current, started = 0.0, [], [], False
    for stage in stages:
        for step in stage:
            row = children.get(step["name"])
            state, progress = "WAITING", 0
            if row is not None:
                state, progress = row.status, row.progress
                if row.finished_at is None and row.started_at is not None:
                    meta = read_meta(rt, row.uuid)
                    running = meta.get("result")
                    if meta.get("status") == JobStatus.SUCCESS.value:
                        # The worker writes SUCCESS to the backend just before the store: done, not 0.
                        state, progress = JobStatus.SUCCESS.value, 100
                    elif isinstance(running, dict) and meta.get("status") != "PENDING":
                        progress = max(progress, int(running.get("current", 0)))
                        state = meta.get("status", state)
                    started = True
                    current.append(step["name"])
                elif row.status == JobStatus.SUCCESS.value:
                    progress, started = 100, True
            done += step.get("weight", 1) * progress / 100
            steps.append({"name": step["name"], "service": step["service"], "status": state, "progress": progress,
                          **({"uuid": row.uuid} if row is not None else {})})
    value = min(99, int(100 * done / total))
    body = {"current": value, "total": 100, "worker_id_version": f"{pipeline.service}:pipeline",
            "start_time": pipeline.created_at.isoformat() if pipeline.created_at else None, "host": None,
            "type": pipeline.service, "step": ", ".join(current) or None, "steps": steps}
    return {"status": JobStatus.PROGRESS.value if started else JobStatus.PENDING.value, "progress": value,
            "result": body if started else None}


def resume_stalled(rt: "Runtime") -> int:
    """Advance pipelines that wait on nothing (their last step's worker died before advancing); return how many."""
    older_than = timedelta(seconds=rt.settings.job_lease_s)
    count = 0
    for pipeline_uuid in rt.store.stalled_pipelines(older_than):
        try:
            advance(rt, pipeline_uuid)
            count += 1
        except Exception as exc:
            log.error("could not advance a stalled pipeline: %s", exc.__class__.__name__,
                      extra={"job_id": pipeline_uuid})
    return count
