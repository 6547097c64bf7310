"""Errors: one root, a family per layer, one JSON shape for every HTTP error.

The uniform codes keep the original gateway's families: 1xx runtime, 2xx gateway, 3xx worker,
4xx capacity, 6xx service-specific. :data:`CODES` is the table docs/errors.md is checked against.
"""
from __future__ import annotations

from typing import Any

#: code -> (HTTP status when the gateway answers it, short name, meaning)
CODES: dict[int, tuple[int, str, str]] = {
    100: (500, "InternalError", "Unexpected error in the gateway; the log has the details."),
    108: (200, "TimeLimitExceeded", "The job ran longer than its time limit (SG_TIME_LIMIT_S / SG_TIME_LIMITS) "
                                    "and was stopped."),
    109: (200, "Terminated", "The job was cancelled (REVOKED) before it finished."),
    110: (200, "WorkerLost", "The job's worker was lost (killed, or its lease expired) more times than its retry "
                             "limit allows."),
    200: (400, "BadRequest", "The request body or query could not be parsed."),
    201: (404, "NotFound", "No such route."),
    202: (404, "UnknownService", "No service or pipeline has that name; GET /services lists them."),
    203: (404, "UnknownJob", "No job with that uuid is visible to the caller."),
    204: (400, "InvalidParameter", "A parameter is not valid for the service's schema."),
    205: (405, "MethodNotAllowed", "The route does not accept that HTTP method."),
    206: (400, "MissingParameter", "A required parameter is missing."),
    207: (400, "InvalidDocumentURL", "doc_url is not an allowed http(s) or file:// URL."),
    208: (404, "OutputNotFound", "The job has no output with that name (yet)."),
    209: (413, "PayloadTooLarge", "The request body is larger than SG_MAX_REQUEST_BYTES."),
    210: (409, "JobFinished", "The job has already finished and cannot be cancelled."),
    211: (400, "StorageNotConfigured", "SG_STORAGE_DOC_URL or SG_ANNOTATION_STORAGE_URL is not set, so storage "
                                       "document ids or ann_doc_id cannot be used."),
    212: (409, "ClientExists", "A client with that name exists already."),
    213: (404, "UnknownClient", "No client has that id."),
    214: (409, "IdempotencyConflict", "The Idempotency-Key was already used for a different request."),
    215: (409, "NotFailed", "Only a job that ended in FAILURE can be requeued."),
    216: (409, "PipelineExists", "A pipeline with that name exists already (PUT replaces it)."),
    217: (404, "UnknownPipeline", "No pipeline defined through /admin/pipelines has that name."),
    218: (409, "PipelineReadOnly", "The pipeline is defined in the settings file; change it there."),
    220: (401, "MissingToken", "No Authorization header; send `Authorization: Bearer <token>`."),
    221: (401, "InvalidToken", "The token is malformed or its signature does not verify."),
    222: (401, "ExpiredToken", "The token has expired; request a new one."),
    223: (403, "Forbidden", "The token is valid but its scopes do not allow this service or route."),
    224: (401, "RevokedToken", "The token's client was disabled or its secret rotated; request a new token."),
    225: (401, "InvalidCredentials", "client_id and secret do not match an enabled client."),
    301: (200, "DownloadError", "The worker could not fetch doc_url."),
    302: (200, "UploadError", "The worker could not store an output or post annotations."),
    305: (200, "InvalidDocumentType", "The document is not a media file the service can read."),
    306: (200, "RuntimeError", "The service failed while processing the document."),
    307: (200, "InvalidJobParameters", "The worker rejected the job's parameters."),
    400: (503, "ServiceUnavailable", "The broker, result backend or job store is unreachable; retry later."),
    401: (429, "QuotaExceeded", "The job would exceed one of the client's quotas; nothing was enqueued."),
    402: (429, "TooManyAttempts", "Too many failed logins for this client id; wait Retry-After seconds."),
}


class ServiceGatewayError(Exception):
    """Root of every error raised by Service Gateway's own code."""


class SettingsError(ServiceGatewayError):
    """Raised when a setting is missing or malformed; the message names the setting."""


class APIError(ServiceGatewayError):
    """Raised when a request must end with an error answer in the uniform JSON shape."""

    def __init__(self, code: int, description: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.status = status or CODES[code][0]
        self.description = description
        self.headers = headers or {}

    @property
    def name(self) -> str:
        return CODES[self.code][1]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "error": self.name,
                "description": self.description}


class Unavailable(APIError):
    """Raised when the broker, result backend or job store cannot be reached (503 + Retry-After)."""

    def __init__(self, what: str, retry_after_s: int = 5) -> None:
        super().__init__(400, f"{what} is unreachable; the request changed nothing, retry in "
                              f"{retry_after_s} s", headers={"Retry-After": str(retry_after_s)})


class JobError(ServiceGatewayError):
    """Raised inside a job when it must end in FAILURE (or REVOKED, code 109) with a uniform code.

    It is also what the result backend stores for FAILURE/REVOKED, so it lives in the gateway's
    core package where both gateway and workers can import it.
    """

    def __init__(self, code: int, message: str, *, transient: bool = False) -> None:
        super().__init__(code, message)
        self.code = int(code)
        self.message = str(message)
        #: A fault that may pass (a timeout, a 5xx): the job is retried with backoff up to its limit.
        self.transient = transient

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class JobCancelled(JobError):
    """Raised inside a job when a cancel request was seen; the job ends REVOKED with code 109."""

    def __init__(self, message: str = "cancelled by request") -> None:
        super().__init__(109, message)


#: Codes counted as authentication failures in the sg_auth_failures metric.
AUTH_FAILURE_CODES = frozenset({220, 221, 222, 224, 225, 402})


def error_response(error: APIError):
    """Build the Flask response of an :class:`APIError` in the uniform JSON shape."""
    from flask import jsonify
    if error.code in AUTH_FAILURE_CODES:
        from .metrics import AUTH_FAILURES   # lazily: workers import this module before metrics are set up
        AUTH_FAILURES.labels(error.name).inc()
    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def init_app(app) -> None:
    """Register the handlers that turn every error, Flask's own included, into the JSON shape."""
    import logging

    from werkzeug.exceptions import HTTPException

    #: werkzeug status -> uniform code, for errors Flask raises before our code runs.
    http_codes = {400: 200, 404: 201, 405: 205, 413: 209}

    @app.errorhandler(APIError)
    def _api_error(error: APIError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = http_codes.get(error.code or 500, 100)
        description = error.description or error.name
        if error.code == 413:
            description = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        api_error = APIError(code, description, status=error.code)
        response = error_response(api_error)
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    # Catch-all, last: an unexpected error is logged with its traceback and answered without it.
    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        logging.getLogger("service_gateway").exception("unhandled error")
        return error_response(APIError(100, "unexpected error in the gateway; it has been logged"))
