"""OpenAPI 3.1 of the live app: its url_map, the service registry and the route metadata below.

The spec is built from what the code validates with: each service's ``ServiceSpec.parameters``
(JSON Schema 2020-12, which OpenAPI 3.1 uses natively), its ``result_schema``, and the error
table ``errors.CODES``. Routes are found in ``app.url_map``, so a route added without metadata
still appears (with a generic description); metadata lives in :data:`ROUTES` (by endpoint) or on
a view through :func:`documented`. The spec is built once per app and cached in ``app.extensions``.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Flask

from . import __version__
from .auth import require_auth
from .errors import CODES
from .services import ServiceSpec
from .status import JobStatus

OPENAPI_VERSION = "3.1.0"
EXTENSION_KEY = "service_gateway.openapi"
#: Methods Flask adds to every rule by itself; they are not operations of the API.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})
#: The code object of require_auth's wrapper: a view wrapped by it needs a token.
_AUTH_CODE = require_auth(lambda: None).__code__
_RULE_ARG = re.compile(r"<(?:(?P<conv>[a-zA-Z_]\w*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-zA-Z_]\w*)>")

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object schema that names its fields and lets new ones be added (answers may grow)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


STR: Schema = {"type": "string"}
NSTR: Schema = {"type": ["string", "null"]}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
TIME: Schema = {"type": ["string", "null"], "description": "ISO 8601 time (UTC)."}
JSON_OBJECT: Schema = {"type": "object"}


@dataclass(frozen=True)
class Route:
    """What the url_map cannot tell about a view: its meaning, arguments, body and answers."""

    summary: str
    tag: str = "other"
    description: str = ""
    #: OpenAPI parameter objects for the query and headers (path parameters come from the rule).
    params: tuple[Schema, ...] = ()
    #: ``requestBody`` object, or a function of the service (per-service routes) returning one.
    body: Schema | Callable[[ServiceSpec | None], Schema] | None = None
    #: Success answers: status -> response object, or a function of the service returning one.
    ok: dict[str, Schema | Callable[[ServiceSpec | None], Schema]] = field(default_factory=dict)
    #: Uniform error codes the route answers (besides those of auth, bodies and backends).
    errors: tuple[int, ...] = ()
    #: Reaches the broker, result backend or job store (so may answer 503).
    backend: bool = True
    #: Schemas of path arguments narrower than their converter's (an enum, say).
    path_schemas: dict[str, Schema] = field(default_factory=dict)


def documented(route: Route) -> Callable[[Callable], Callable]:
    """Attach OpenAPI metadata to a view (for blueprints that keep it next to the code)."""
    def decorate(view: Callable) -> Callable:
        view.__openapi__ = route  # type: ignore[attr-defined]
        return view
    return decorate


def json_response(description: str, schema: Schema, headers: Schema | None = None) -> Schema:
    response: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def query(name: str, description: str, schema: Schema | None = None, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or STR}


# -- shared answers ---------------------------------------------------------------------------------
STATUS_NAMES = [s.value for s in JobStatus]
LIMIT = query("limit", "Page size, 1-200 (default 50).", {"type": "integer", "minimum": 1, "maximum": 200})
CURSOR = query("cursor", "`next_cursor` of the previous page.")
SINCE = query("since", "ISO 8601 time, e.g. 2026-11-22T10:00:00Z.")
UNTIL = query("until", "ISO 8601 time, e.g. 2026-11-22T10:00:00Z.")
UUID = query("uuid", "The job id returned at submit.", required=True)
FORMAT = query("format", "`webannotation` renders an annotator's result as a W3C Web Annotation page.",
               {"enum": ["json", "webannotation"]})
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Repeat a submit safely: the same key and request return the first job's uuid.",
                   "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": INT}}

JOB_SCHEMA = _obj(
    ["uuid", "service", "status", "owner", "doc_url", "params", "misc", "progress", "created_at"],
    uuid=STR, service=STR, status={"enum": STATUS_NAMES}, owner=STR, doc_url=NSTR, params=JSON_OBJECT,
    misc={"type": ["object", "null"]}, ann_doc_id=NSTR, progress=INT, cancel_requested={"type": "boolean"},
    attempts={"type": ["integer", "null"]}, note=NSTR, created_at=TIME, started_at=TIME, finished_at=TIME)
CLIENT_SCHEMA = _obj(["client_id", "name", "enabled", "scopes", "quotas"], client_id=STR, name=STR,
                     enabled={"type": "boolean"}, scopes={"type": "array", "items": STR}, quotas=JSON_OBJECT,
                     created_at=TIME, updated_at=TIME)
CLIENT_WITH_SECRET = {"allOf": [ref("Client"), _obj(["secret"], secret={
    "type": "string", "description": "Shown in this answer only."})]}
QUOTAS_SCHEMA: Schema = {"type": "object", "description": "Limits: max_in_flight, max_jobs_per_day, "
                         "max_media_minutes_per_month (numbers >= 0 or null), and per service under `services`."}
SCOPES_SCHEMA: Schema = {"type": "array", "items": STR,
                         "description": "Service names, `*` (every service) or `admin`."}


PIPELINE_STEP = _obj(["service"], service=STR, name=STR, params=JSON_OBJECT,
                     input={"type": "string", "description": "auto, doc, <step> or <step>/<output name>."},
                     weight={"type": "number"})
PIPELINE_BODY = _obj(["steps"], name=STR, description=STR, steps={
    "type": "array", "minItems": 1, "description": "Stages in order: a step, or {\"parallel\": [step, ...]}.",
    "items": {"anyOf": [PIPELINE_STEP, _obj(["parallel"], parallel={"type": "array", "items": PIPELINE_STEP})]}})
PIPELINE_SCHEMA = _obj(["name", "description", "steps", "source"], name=STR, description=STR, source={
    "enum": ["settings", "admin"]}, kind={"const": "pipeline"}, steps={"type": "array"}, parameters=JSON_OBJECT)


def _running_result() -> Schema:
    return _obj(["current", "total"], current=INT, total=INT, worker_id_version=STR, start_time=STR, host=STR,
                type=STR)


def status_schema(spec: ServiceSpec | None) -> Schema:
    """The status body; on SUCCESS ``result`` is the service's result (its ``result_schema`` when known)."""
    success = ref(f"{spec.name}.result") if spec is not None and spec.result_schema else JSON_OBJECT
    return _obj(["uuid", "status", "progress", "result"], uuid=STR, status={"enum": STATUS_NAMES},
                progress={"type": "integer", "minimum": 0, "maximum": 100},
                result={"anyOf": [{"type": "null"}, _running_result(), success, ref("JobError"),
                                  _obj(["message"], message=STR)],
                        "description": "null while PENDING; the running object while it runs; the service's "
                                       "result on SUCCESS; {code, message} on FAILURE/REVOKED; {message} when "
                                       "EXPIRED."})


def _status_ok(spec: ServiceSpec | None) -> Schema:
    return json_response("The job's status.", status_schema(spec))


def _cancel_ok(spec: ServiceSpec | None) -> Schema:
    return json_response("Cancel requested; the status as it is now.", status_schema(spec))


def _accepted(spec: ServiceSpec | None) -> Schema:
    return json_response("Job recorded and enqueued.", _obj(["uuid"], uuid=STR), {
        "Location": {"description": "The job's status route.", "schema": STR}})


def _params_schema(spec: ServiceSpec | None) -> Schema:
    return ref(f"{spec.name}.parameters") if spec is not None else {
        "type": "object", "description": "The service's parameters (its JSON Schema is in GET /services)."}


def _process_body(spec: ServiceSpec | None) -> Schema:
    schema = {"type": "object", "required": ["doc_url"], "additionalProperties": False, "properties": {
        "doc_url": {"type": "string", "description": "The media document: http(s)://..., or file://... under "
                                                     "SG_FILE_ROOTS."},
        "params": _params_schema(spec),
        "misc": {"type": "object", "description": "Free-form values kept with the job."},
        "ann_doc_id": {"type": ["string", "null"], "description": "Annotation document to post results to."},
        "callback_url": {"type": ["string", "null"], "description": "Gets the final status, signed (webhooks)."},
        "callback_progress": {"type": "boolean", "default": False,
                              "description": "callback_url also gets throttled progress deliveries."}}}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _annotate_body(spec: ServiceSpec | None) -> Schema:
    properties: dict[str, Schema] = {
        "doc_url": {"type": "string", "description": "The media document (required here or in the query)."},
        "ann_doc_id": STR, "callback_url": STR,
        "callback_progress": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}}
    encoding: dict[str, Schema] = {}
    if spec is not None:
        for name, prop in spec.properties.items():
            properties[name] = copy.deepcopy(prop)
            if "array" in _types(prop):
                # The gateway reads one value per field and splits it on commas (ServiceSpec.coerce).
                encoding[name] = {"style": "form", "explode": False}
    schema = {"type": "object", "properties": properties, "additionalProperties": {"type": "string"},
              "description": "Form fields the service's schema names are its parameters (converted from text); "
                             "any other field is kept in the job's `misc`."}
    media: Schema = {"schema": schema}
    if encoding:
        media["encoding"] = encoding
    return {"required": False, "content": {"application/x-www-form-urlencoded": media}}


def _types(schema: Schema) -> set[str]:
    kind = schema.get("type")
    kinds = set(kind) if isinstance(kind, list) else {kind} if kind else set()
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        kinds |= _types(branch)
    return kinds


def _json_body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


SUBMIT_ARGS = (query("doc_url", "The media document (the form field wins when both are sent)."),
               query("ann_doc_id", "Annotation document to post results to."),
               query("callback_url", "Gets the final status, signed (webhooks)."),
               query("callback_progress", "true: callback_url also gets throttled progress deliveries.",
                     {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}),
               IDEMPOTENCY_KEY)
SUBMIT_ERRORS = (202, 204, 206, 207, 211, 214, 223, 401)
USAGE_ARGS = (SINCE, UNTIL, query("service", "Only this service."), query("group", "Sum by day or month.",
              {"enum": ["day", "month"]}), query("format", "json (default) or csv.", {"enum": ["json", "csv"]}))
USAGE_OK = {"description": "Usage by period, owner and service, with totals (and the caller's quotas).",
            "content": {"application/json": {"schema": _obj(["since", "until", "usage", "totals"], since=STR,
                                                             until=STR, usage={"type": "array", "items": _obj(
                                                                 ["period", "owner", "service", "jobs"])},
                                                             totals=JSON_OBJECT, quotas=JSON_OBJECT)},
                        "text/csv": {"schema": STR}}}
CANARIE_PAGE = {"description": "JSON with `Accept: application/json`, else an HTML page.", "headers": {
    "Vary": {"schema": STR}}, "content": {"application/json": {"schema": JSON_OBJECT},
                                          "text/html": {"schema": STR}}}
JOB_PAGE = json_response("A page of jobs, and the cursor of the next one (null on the last page).",
                         _obj(["jobs", "next_cursor"], jobs={"type": "array", "items": ref("Job")},
                              next_cursor=NSTR))

#: Metadata of the routes the gateway's blueprints serve, by endpoint.
ROUTES: dict[str, Route] = {
    "ops.health": Route("Liveness: the process is up.", "ops", backend=False,
                        ok={"200": json_response("Up.", _obj(["status"], status={"const": "ok"}))}),
    "ops.ready": Route("Readiness: broker, result backend and job store answer.", "ops",
                       description="503 names what is down in `checks` (the error body plus `checks`).",
                       ok={"200": json_response("Ready.", _obj(["status", "checks"], status={"const": "ready"},
                                                               checks=JSON_OBJECT))}),
    "ops.metrics": Route("Prometheus metrics (admin token).", "ops", errors=(223,), ok={"200": {
        "description": "Prometheus text exposition.", "content": {"text/plain": {"schema": STR}}}}),
    "ops.infrastructure": Route("Per queue: backlog, running, workers, throughput and recommended workers.", "ops",
                                ok={"200": json_response("The infrastructure report.", _obj(
                                    ["queues"], target_drain_s=NUM, window_s=NUM,
                                    queues={"type": "array", "items": JSON_OBJECT}))}),
    "auth.access_token": Route(
        "Exchange client_id + secret for an access token.", "auth", errors=(200, 206, 225, 402),
        body={"required": True, "content": {
            "application/json": {"schema": _obj(["client_id", "secret"], client_id=STR, secret=STR)},
            "application/x-www-form-urlencoded": {"schema": _obj(["client_id", "secret"], client_id=STR,
                                                                 secret=STR)}}},
        ok={"200": json_response("A token to send as `Authorization: Bearer <token>`.", _obj(
            ["access_token", "token_type", "expires_in"], access_token=STR, token_type={"const": "Bearer"},
            expires_in=INT))}),
    "jobs.services": Route("The service registry: parameters (JSON Schema), result schema, workers online.",
                           "jobs", ok={"200": json_response("Every service.", _obj(["services"], services={
                               "type": "array", "items": _obj(
                                   ["name", "version", "description", "queue", "parameters"], name=STR, version=STR,
                                   description=STR, queue=STR, parameters=JSON_OBJECT,
                                   result_schema={"type": ["object", "null"]}, workers_online=INT)}))}),
    "jobs.list_jobs": Route("The caller's jobs, newest first, paginated.", "jobs", errors=(202, 204),
                            params=(query("service", "Only this service."),
                                    query("status", "Only this status.", {"enum": STATUS_NAMES}), SINCE, UNTIL,
                                    LIMIT, CURSOR,
                                    query("sort", "Newest first (default) or oldest first.",
                                          {"enum": ["-created_at", "created_at"]}),
                                    query("all", "`true`: every owner's jobs (admin token); other values: false.")),
                            ok={"200": JOB_PAGE}),
    "jobs.get_job": Route("A job's durable record plus its status fields.", "jobs", params=(FORMAT,),
                          errors=(203, 204, 223), ok={"200": json_response(
                              "The job.", {"allOf": [ref("Job"), status_schema(None)]})}),
    "jobs.delete_job": Route("Cancel a job.", "jobs", errors=(203, 210, 223), ok={"202": _cancel_ok}),
    "jobs.output": Route("Download one of a job's output files (Range and conditional requests).", "jobs",
                         description="A pipeline serves its steps' outputs; `step` picks the step when two "
                                     "steps made files of the same name.",
                         params=(query("step", "A pipeline's step name (only for a pipeline's outputs)."),),
                         errors=(203, 208, 223), ok={"200": {"description": "The file.",
                                                             "content": {"*/*": {"schema": {}}}}}),
    "annotate.annotate": Route(
        "Submit a job from form (or query) arguments.", "submit", params=SUBMIT_ARGS, body=_annotate_body,
        description="With a `storage_doc_id`, `doc_url` is resolved from SG_STORAGE_DOC_URL.",
        errors=SUBMIT_ERRORS, ok={"202": _accepted}),
    "annotate.process": Route("Submit a job with a JSON body.", "submit", params=(IDEMPOTENCY_KEY,),
                              body=_process_body, errors=SUBMIT_ERRORS, ok={"202": _accepted}),
    "annotate.status": Route("A job's status.", "submit", params=(UUID, FORMAT), errors=(202, 203, 204, 206, 223),
                             ok={"200": _status_ok}),
    "annotate.cancel": Route("Cancel a queued or running job (GET accepted, as in the original).", "submit",
                             params=(UUID,), errors=(202, 203, 206, 210, 223), ok={"202": _cancel_ok}),
    "usage.own_usage": Route("The caller's usage, for billing.", "usage", params=USAGE_ARGS, errors=(202, 204),
                             ok={"200": USAGE_OK}),
    "usage.all_usage": Route("Every client's usage (admin token).", "admin",
                             params=(*USAGE_ARGS, query("client", "Only this client id.")), errors=(202, 204, 223),
                             ok={"200": USAGE_OK}),
    "admin.list_clients": Route("Every client.", "admin", errors=(223,), ok={"200": json_response(
        "The clients.", _obj(["clients"], clients={"type": "array", "items": ref("Client")}))}),
    "admin.add_client": Route(
        "Create a client; its secret is in this answer only.", "admin", errors=(204, 206, 212, 223),
        body=_json_body(_obj(["name"], name={"type": "string", "minLength": 1, "maxLength": 200},
                             scopes=SCOPES_SCHEMA, quotas=QUOTAS_SCHEMA)),
        ok={"201": json_response("Created.", CLIENT_WITH_SECRET)}),
    "admin.get_client": Route("One client.", "admin", errors=(213, 223),
                              ok={"200": json_response("The client.", ref("Client"))}),
    "admin.update_client": Route(
        "Change enabled, scopes and/or quotas; disabling revokes the client's tokens.", "admin",
        errors=(204, 213, 223),
        body=_json_body({**_obj(enabled={"type": "boolean"}, scopes=SCOPES_SCHEMA, quotas=QUOTAS_SCHEMA),
                         "additionalProperties": False}),
        ok={"200": json_response("The client as it is now.", ref("Client"))}),
    "admin.rotate_secret": Route("Give a client a new secret; its tokens fail at once.", "admin", errors=(213, 223),
                                 ok={"200": json_response("The client and its new secret.", CLIENT_WITH_SECRET)}),
    "admin.failed_jobs": Route("Jobs that ended in FAILURE, newest first.", "admin", errors=(204, 223),
                               params=(query("service", "Only this service."), LIMIT, CURSOR),
                               ok={"200": json_response("A page of failed jobs.", _obj(
                                   ["jobs", "next_cursor"], jobs={"type": "array", "items": {"allOf": [
                                       ref("Job"), _obj(["error"], error=JSON_OBJECT)]}}, next_cursor=NSTR))}),
    "admin.requeue_job": Route("Run a FAILURE job again from the start.", "admin", errors=(203, 215, 223),
                               ok={"202": _cancel_ok}),
    "admin.queues": Route("Each queue: messages, consumers and jobs waiting.", "admin", errors=(223,),
                          ok={"200": json_response("The queues.", _obj(["queues"], queues={
                              "type": "array", "items": _obj(["queue"], queue=STR)}))}),
    "admin.purge_queue": Route(
        "Drop every waiting job of a queue (they end REVOKED).", "admin", errors=(202, 206, 223),
        body=_json_body(_obj(["confirm"], confirm={"type": "string", "description": "The queue's name again."}),
                        required=False),
        ok={"200": json_response("What was dropped.", _obj(["queue", "jobs_revoked", "messages_purged"],
                                                          queue=STR, jobs_revoked=INT, messages_purged=INT))}),
    "admin.workers": Route("Workers online, their queues and the jobs they run.", "admin", errors=(223,),
                           ok={"200": json_response("The workers.", _obj(["workers"], workers={
                               "type": "array", "items": _obj(["hostname", "queues"])}))}),
    "admin.in_progress": Route("Every job started and not finished, oldest first.", "admin", errors=(223,),
                               ok={"200": json_response("The jobs.", _obj(["jobs"], jobs={
                                   "type": "array", "items": ref("Job")}))}),
    "admin.list_pipelines": Route("Every pipeline (settings file and admin-defined).", "admin", errors=(223,),
                                  ok={"200": json_response("The pipelines.", _obj(["pipelines"], pipelines={
                                      "type": "array", "items": ref("Pipeline")}))}),
    "admin.add_pipeline": Route(
        "Define a pipeline; each step is checked against its service's parameter schema.", "admin",
        errors=(204, 206, 216, 218, 223), body=_json_body(PIPELINE_BODY),
        ok={"201": json_response("Created.", ref("Pipeline"))}),
    "admin.get_pipeline": Route("One pipeline.", "admin", errors=(217, 223),
                                ok={"200": json_response("The pipeline.", ref("Pipeline"))}),
    "admin.replace_pipeline": Route(
        "Replace a pipeline's steps (jobs already submitted keep theirs).", "admin",
        errors=(204, 206, 217, 218, 223), body=_json_body(PIPELINE_BODY),
        ok={"200": json_response("The pipeline as it is now.", ref("Pipeline"))}),
    "admin.delete_pipeline": Route("Delete an admin-defined pipeline.", "admin", errors=(217, 218, 223),
                                   ok={"204": {"description": "Deleted."}}),
    # Live progress and webhooks.
    "events.events": Route(
        "Server-Sent Events of the job's status and progress until it finishes.", "jobs", errors=(203, 223),
        description="`event: status` bodies, then `event: result`; reconnect with `Last-Event-ID`.",
        params=({"name": "Last-Event-ID", "in": "header", "required": False, "schema": STR,
                 "description": "The last event id seen: only what changed since is sent."},),
        ok={"200": {"description": "The event stream.", "content": {"text/event-stream": {"schema": STR}}}}),
    "jobs.job_deliveries": Route("Every attempt to deliver the job's final status to its callback_url.", "jobs",
                                 errors=(203, 223), ok={"200": json_response("The deliveries.", _obj(
                                     ["uuid", "deliveries"], uuid=STR, callback_url=NSTR,
                                     deliveries={"type": "array", "items": JSON_OBJECT}))}),
    "auth.webhook_secret_route": Route("The caller's webhook signing secret.", "auth", ok={"200": json_response(
        "The secret and how deliveries are signed.", _obj(["webhook_secret"], webhook_secret=STR,
                                                          signature_header=STR, scheme=STR))}),
    # The CANARIE service API: public, HTML unless the caller prefers JSON.
    "canarie.platform_info": Route("The gateway's CANARIE info, with every service's.", "canarie",
                                   ok={"200": CANARIE_PAGE}),
    "canarie.info": Route("A service's CANARIE info.", "canarie", errors=(202,), ok={"200": CANARIE_PAGE}),
    "canarie.stats": Route("A service's invocations since lastReset (503 while no worker consumes it).", "canarie",
                           errors=(202,), ok={"200": CANARIE_PAGE}),
    "canarie.link": Route("Redirect to one of the service's CANARIE pages, or a page saying there is none.",
                          "canarie", errors=(202,), ok={
                              "200": CANARIE_PAGE,
                              "204": {"description": "No source URL is published."},
                              "302": {"description": "The page's configured URL.",
                                      "headers": {"Location": {"schema": STR}}}}),
}

#: Routes whose first path segment is a service name: emitted once per service too.
SERVICE_ARG = "svc"


def error_schema() -> Schema:
    return {"type": "object", "required": ["status", "code", "error", "description"],
            "description": "The one error shape of every error answer (docs/errors.md lists the codes).",
            "properties": {
                "status": {"type": "integer", "description": "The HTTP status."},
                "code": {"type": "integer", "enum": sorted(CODES), "description": "The uniform code."},
                "error": {"type": "string", "enum": sorted({name for _, name, _ in CODES.values()})},
                "description": {"type": "string", "description": "What went wrong and what to do."}}}


def _error_responses(codes: set[int]) -> dict[str, Schema]:
    """One response per HTTP status, its body the error shape narrowed to the codes it can carry."""
    by_status: dict[int, list[int]] = {}
    for code in sorted(codes):
        by_status.setdefault(CODES[code][0], []).append(code)
    out: dict[str, Schema] = {}
    for status, group in sorted(by_status.items()):
        names = "; ".join(f"{c} {CODES[c][1]}: {CODES[c][2]}" for c in group)
        schema = {"$ref": "#/components/schemas/Error", "properties": {
            "status": {"const": status}, "code": {"enum": group}}}
        out[str(status)] = json_response(names, schema, RETRY_AFTER if status in (429, 503) else None)
    return out


def _requires_auth(view: Callable) -> bool:
    while view is not None:
        if getattr(view, "__code__", None) is _AUTH_CODE:
            return True
        view = getattr(view, "__wrapped__", None)
    return False


def _path_of(rule: str) -> tuple[str, list[tuple[str, Schema]]]:
    """The OpenAPI path of a werkzeug rule, and its (name, schema from the converter) arguments in order."""
    args = [(m.group("name"), _converter_schema(m.group("conv") or "default", m.group("args")))
            for m in _RULE_ARG.finditer(rule)]
    return _RULE_ARG.sub(lambda m: "{" + m.group("name") + "}", rule), args


def _converter_schema(converter: str, args: str | None) -> Schema:
    if converter == "any" and args:
        return {"enum": [a.strip().strip("'\"") for a in args.split(",") if a.strip()]}
    return copy.deepcopy(_CONVERTER_SCHEMAS.get(converter, {"type": "string", "minLength": 1}))


_CONVERTER_SCHEMAS = {"int": {"type": "integer", "minimum": 0}, "float": {"type": "number", "minimum": 0},
                      "uuid": {"type": "string", "format": "uuid"}}


def _resolve(value: Any, spec: ServiceSpec | None) -> Schema:
    return value(spec) if callable(value) else copy.deepcopy(value)


def _operation(endpoint: str, method: str, route: Route, path: str, args: list[tuple[str, Schema]],
               needs_auth: bool, spec: ServiceSpec | None) -> Schema:
    suffix = re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_") or "root"
    op: Schema = {"operationId": f"{method.lower()}_{suffix}", "summary": route.summary,
                  "tags": [f"service: {spec.name}" if spec is not None else route.tag],
                  "x-endpoint": endpoint}
    if route.description:
        op["description"] = route.description
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": copy.deepcopy(route.path_schemas.get(name) or schema)} for name, schema in args]
    parameters += [copy.deepcopy(p) for p in route.params]
    if parameters:
        op["parameters"] = parameters
    codes = set(route.errors) | {100}
    if spec is not None:
        codes.discard(202)            # the service exists on its own path
    if args:
        codes.add(201)                # a path argument holding "/" (sent as %2F) makes another path
    if route.body is not None and method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = _resolve(route.body, spec)
        codes |= {200, 209}
    if route.backend:
        codes.add(400)
    if needs_auth:
        codes |= {220, 221, 222, 224}
        op["security"] = [{"bearerAuth": []}, {"bareToken": []}]
    else:
        op["security"] = []
    responses = {status: _resolve(value, spec) for status, value in route.ok.items()}
    responses.update(_error_responses(codes))
    if endpoint == "ops.ready":       # its 503 adds `checks` to the error shape
        responses["503"]["content"]["application/json"]["schema"]["properties"]["checks"] = JSON_OBJECT
    op["responses"] = responses
    return op


def _fallback(view: Callable) -> Route:
    """Metadata of a route nobody described yet: any success, the error shape for the rest."""
    summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else view.__name__.replace("_", " ")
    return Route(summary, "other", errors=(200, 201, 202, 203, 204, 206), ok={"2XX": {
        "description": "Success.", "content": {"*/*": {"schema": {}}}}})


def build_spec(app: Flask) -> Schema:
    """Build the OpenAPI document of ``app``: every rule of its url_map, per-service paths, schemas."""
    rt = app.extensions["service_gateway"]
    services: dict[str, ServiceSpec] = rt.services
    paths: dict[str, Schema] = {}
    schemas: dict[str, Schema] = {"Error": error_schema(), "Job": JOB_SCHEMA, "Client": CLIENT_SCHEMA,
                                  "Pipeline": PIPELINE_SCHEMA,
                                  "JobError": _obj(["code", "message"], code=INT, message=STR)}
    for name, spec in sorted(services.items()):
        schemas[f"{name}.parameters"] = copy.deepcopy(spec.parameters)
        if spec.result_schema:
            # $schema belongs at a document's root; here the schema is embedded (OpenAPI 3.1 is 2020-12 already).
            schemas[f"{name}.result"] = {k: v for k, v in copy.deepcopy(spec.result_schema).items() if k != "$schema"}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        route = getattr(view, "__openapi__", None) or ROUTES.get(rule.endpoint) or _fallback(view)
        needs_auth = _requires_auth(view)
        path, args = _path_of(rule.rule)
        methods = sorted((rule.methods or set()) - IMPLICIT_METHODS)
        targets: list[tuple[str, list[tuple[str, Schema]], ServiceSpec | None]] = [(path, args, None)]
        if args and args[0][0] == SERVICE_ARG and path.startswith("/{svc}/"):
            targets += [(path.replace("{svc}", name, 1), args[1:], spec) for name, spec in sorted(services.items())]
        for target, target_args, spec in targets:
            item = paths.setdefault(target, {})
            for method in methods:
                item[method.lower()] = _operation(rule.endpoint, method, route, target, target_args, needs_auth, spec)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": "Service Gateway", "version": __version__,
                 "description": "REST gateway in front of Celery workers for media jobs. Every error answer is "
                                "`{status, code, error, description}`. `POST /{svc}/...` routes are also listed "
                                "per service with that service's own parameter JSON Schema.",
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "`Authorization: Bearer <jwt>`: from `POST /auth/access-token` or "
                                              "`sg token`."},
                "bareToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                              "description": "The original gateway's form: `Authorization: <jwt>` (no prefix)."}},
        },
        "tags": [{"name": "submit", "description": "Seed-compatible per-service routes; `{svc}` is any service, "
                                                   "the `service: <name>` tags list each one's own."},
                 *({"name": f"service: {n}", "description": s.description} for n, s in sorted(services.items()))],
    }


def spec_for(app: Flask) -> Schema:
    """The app's OpenAPI document, built on first use and kept for the app's life."""
    cached = app.extensions.get(EXTENSION_KEY)
    if cached is None:
        cached = app.extensions[EXTENSION_KEY] = build_spec(app)
    return cached
