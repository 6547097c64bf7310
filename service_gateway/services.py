"""Service declarations: the contract shared by the gateway and the workers.

A service module (e.g. ``workers.services.transcode``) declares one :class:`ServiceSpec` at
module level and keeps its heavy imports (ffmpeg, cv2, webrtcvad) inside functions, so the
gateway can load every declaration without them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import SettingsError

#: A cross-field check run after the schema: raises ParameterError for what JSON Schema cannot say.
Check = Callable[[dict[str, Any]], None]


class ParameterError(ValueError):
    """Raised when job parameters break the service's schema; ``field`` names the culprit."""

    def __init__(self, field: str, message: str, *, missing: bool = False) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.missing = missing


@dataclass
class ServiceSpec:
    """What a service is: the one source of truth for validation, the registry and the worker."""

    name: str
    version: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    queue: str = ""
    check: Check | None = None
    #: JSON Schema of the result on SUCCESS (annotators share service_gateway.annotations.RESULT_SCHEMA).
    result_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.queue = self.queue or self.name
        self.parameters.setdefault("type", "object")
        self.parameters.setdefault("additionalProperties", False)
        Draft202012Validator.check_schema(self.parameters)

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)

    @property
    def properties(self) -> dict[str, Any]:
        return self.parameters.get("properties", {})

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` and return them with the schema's defaults filled in.

        Raises:
            ParameterError: the first error, naming the field.
        """
        error = next(iter(sorted(self._validator.iter_errors(params), key=lambda e: list(e.path))), None)
        if error is not None:
            raise _parameter_error(error)
        filled = {k: v["default"] for k, v in self.properties.items() if "default" in v}
        filled.update(params)
        if self.check:
            self.check(filled)
        return filled

    def coerce(self, raw: dict[str, str]) -> dict[str, Any]:
        """Convert form/query strings to the types the schema declares (before :meth:`validate`)."""
        out: dict[str, Any] = {}
        for key, value in raw.items():
            schema = self.properties.get(key, {})
            kinds = _kinds(schema)
            out[key] = _coerce_text(value, kinds)
            if "array" in kinds and isinstance(out[key], list):
                item_kinds = _kinds(schema.get("items") or {})
                out[key] = [_coerce_text(item, item_kinds) for item in out[key]]
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "queue": self.queue, "parameters": self.parameters, "result_schema": self.result_schema}


def _kinds(schema: dict[str, Any]) -> list[Any]:
    """The JSON types a (sub)schema accepts, including those of its anyOf/oneOf branches."""
    kind = schema.get("type")
    kinds = list(kind) if isinstance(kind, list) else [kind]
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        kinds += _kinds(branch)
    return kinds


def _coerce_text(value: str, kinds: list[Any]) -> Any:
    text = value.strip()
    if "integer" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    if "boolean" in kinds and text.lower() in ("true", "false", "1", "0"):
        return text.lower() in ("true", "1")
    if "array" in kinds:
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _parameter_error(error: ValidationError) -> ParameterError:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        name = f"{path}.{missing}" if path else missing
        return ParameterError(name, "is required", missing=True)
    if error.validator == "additionalProperties":
        return ParameterError(path, f"{error.message}; the service's parameters are listed by GET /services")
    return ParameterError(path or "params", error.message)


def load_services(module_names: list[str]) -> dict[str, ServiceSpec]:
    """Import the declaring modules and return their services by name.

    Raises:
        SettingsError: a module cannot be imported or declares no service.
    """
    services: dict[str, ServiceSpec] = {}
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SettingsError(f"SG_SERVICE_MODULES: cannot import {module_name} ({exc})") from None
        spec = getattr(module, "service", None)
        if not isinstance(spec, ServiceSpec):
            raise SettingsError(f"SG_SERVICE_MODULES: {module_name} has no module-level `service`")
        if spec.name in services:
            raise SettingsError(f"SG_SERVICE_MODULES: service {spec.name!r} is declared twice")
        services[spec.name] = spec
    return services
