"""deploy/: compose file, Kubernetes + KEDA manifests, Dockerfiles and the Grafana dashboard.

There is no Docker engine or cluster here, so every file is parsed and checked against the code
(the queues of ``Runtime.queues``, the settings table, the metrics of service_gateway/metrics.py)
and against published schemas: the Compose Specification (the copy check-jsonschema bundles) and
Kubernetes' OpenAPI schemas (bundled by kubernetes-validate), both offline. Each ``*_problems``
function returns what is wrong in words; the mutation tests at the end break a parsed copy and
show that each checker notices.
"""
from __future__ import annotations

import configparser
import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import pytest
import yaml

from service_gateway.errors import SettingsError
from service_gateway.runtime import Runtime
from service_gateway.settings import SETTINGS, load_settings
from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "service-gateway.json"
NAMESPACE = "service-gateway"
#: Stand-in for every secret of deploy/.env.example and secret.yaml.example when settings are resolved.
SAMPLE_SECRET = "s" * 40
PLACEHOLDER = "CHANGE-ME"


# -- what the code says ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    return Runtime(load_settings({"data_dir": str(tmp_path_factory.mktemp("deploy"))}, environ={}))


@pytest.fixture(scope="module")
def queues(runtime) -> dict[str, list[str]]:
    """Every queue a deployment must consume, with the services it carries (webhooks: none)."""
    by_queue: dict[str, list[str]] = {queue: [] for queue in runtime.queues}
    for name, spec in runtime.services.items():
        by_queue[spec.queue].append(name)
    return by_queue


def setting_names() -> set[str]:
    """Every SG_ variable something reads: the settings table, and gunicorn.conf.py's own few."""
    gunicorn = (ROOT / "gunicorn.conf.py").read_text()
    return {s.env for s in SETTINGS} | set(re.findall(r"environ\.get\(\s*[\"'](SG_\w+)[\"']", gunicorn))


def metric_series() -> dict[str, set[str]]:
    """Family -> the series names it exports, for every metric service_gateway/metrics.py defines."""
    from prometheus_client.metrics import MetricWrapperBase

    from service_gateway import metrics
    families = [family for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)
                for family in obj.describe()]
    families += list(metrics.SharedStateCollector(lambda: {"in_flight": {}, "queues": {}, "up": 1}).collect())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {f.name: {f.name + suffix for suffix in suffixes[f.type]} for f in families}


# -- parsing helpers -------------------------------------------------------------------------------
def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict]]:
    """(file, document) for every manifest under deploy/k8s, the Secret template included."""
    paths = sorted(K8S.rglob("*.yaml")) + [K8S / "secret.yaml.example"]
    return [(str(p.relative_to(DEPLOY)), doc) for p in paths for doc in load_yaml_docs(p)]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def env_example() -> dict[str, str]:
    """deploy/.env.example's variables, set or commented out (``# NAME=value``)."""
    found = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``$$``, ``${X}``, ``${X:-default}``, ``${X:?error}``), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("-") and unset:
            return arg
        if op and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        return current or ""
    return _INTERPOLATION.sub(one, value)


def compose_variables(text: str) -> dict[str, bool]:
    """Variables the compose file interpolates -> whether they are required (``:?``)."""
    found: dict[str, bool] = {}
    for m in _INTERPOLATION.finditer(text):
        name = m.group(1) or m.group(4)
        if name:
            found[name] = found.get(name, False) or bool(m.group(2) and m.group(2).endswith("?"))
    return found


def sample_compose_env() -> dict[str, str]:
    """What deploy/.env would hold once its CHANGE-MEs are replaced."""
    return {k: SAMPLE_SECRET if PLACEHOLDER in v else v for k, v in env_example().items()
            if not v.startswith("#")}


def go_duration_s(text: str) -> float:
    """Compose's durations (Go's syntax: 1h30m, 90s, 1m30s)."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def argv(command: Any) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def worker_queues(args: list[str]) -> list[str] | None:
    """The queues of a `celery -A workers worker -Q a,b ...` command line; None when it is not one."""
    if args[:4] != ["celery", "-A", "workers", "worker"]:
        return None
    for i, arg in enumerate(args):
        if arg in ("-Q", "--queues") and i + 1 < len(args):
            return args[i + 1].split(",")
        if arg.startswith("--queues="):
            return arg.split("=", 1)[1].split(",")
    return []


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def needed_grace_s(services: list[str], settings) -> float:
    """A warm shutdown must outlast the longest job of the queue: its hard time limit (limit + grace)."""
    limits = [settings.hard_time_limit_for(s) for s in services]
    if not limits or not all(limits):
        return 0.0              # no limit (webhooks, or a service without one): nothing to check against
    return max(limits)


def settings_problems(where: str, env: dict[str, str], known_services: Iterable[str]):
    """Resolve ``env`` as a process would: (the settings, or None when they do not load; the problems)."""
    problems = []
    try:
        settings = load_settings(environ=env)
    except SettingsError as exc:
        return None, [f"{where}: {exc}"]
    for name in ("time_limits", "retries"):
        for item in settings.values[name]:
            service = item.partition("=")[0].strip()
            if service not in known_services:
                problems.append(f"{where}: SG_{name.upper()} names {service!r}, which is not a service")
    return settings, problems


# -- Compose -----------------------------------------------------------------------------------------
def compose_schema_problems(data: dict) -> list[str]:
    need(_importable("check_jsonschema"), "check-jsonschema (the Compose Specification schema)")
    from importlib.resources import files

    import jsonschema
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))]


def compose_problems(data: dict, queues: dict[str, list[str]], runtime: Runtime) -> list[str]:
    problems: list[str] = []
    try:
        data = interpolate(data, sample_compose_env())
    except KeyError as exc:
        return [f"a required variable is not in deploy/.env.example: {exc}"]
    services: dict[str, dict] = data.get("services", {})
    stages = {"Dockerfile.gateway": dockerfile_stages(DEPLOY / "Dockerfile.gateway"),
              "Dockerfile.worker": dockerfile_stages(DEPLOY / "Dockerfile.worker")}

    for name, svc in services.items():
        for dep in svc.get("depends_on", {}) or {}:
            if dep not in services:
                problems.append(f"{name}: depends_on unknown service {dep!r}")
        build = svc.get("build")
        if build:
            context = (DEPLOY / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: build.dockerfile {dockerfile.name} does not exist")
            elif build.get("target") and build["target"] not in stages.get(dockerfile.name, []):
                problems.append(f"{name}: build.target {build['target']!r} is not a stage of {dockerfile.name}")
        for volume in svc.get("volumes", []):
            source = (volume.get("source") if isinstance(volume, dict) else
                      volume.split(":")[0] if ":" in volume else None)
            if not source:
                continue
            if source.startswith((".", "/")):
                if not (DEPLOY / source).exists():
                    problems.append(f"{name}: bind mount source {source} does not exist")
            elif source not in (data.get("volumes") or {}):
                problems.append(f"{name}: volume {source!r} is not declared under volumes:")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        if any(k.startswith("SG_") for k in env):
            settings, found = settings_problems(f"compose service {name}", {k: str(v) for k, v in env.items()},
                                                runtime.services)
            problems += found
            svc["_settings"] = settings
        if "FLOWER_UNAUTHENTICATED_API" in env:
            problems.append(f"{name}: FLOWER_UNAUTHENTICATED_API must never be set")

    # One worker service per queue, named after it, consuming exactly it, scalable.
    consumed: dict[str, str] = {}
    for name, svc in services.items():
        args = argv(svc.get("command"))
        qs = worker_queues(args)
        if qs is None:
            continue
        if qs != [name]:
            problems.append(f"worker service {name}: consumes {qs}, expected exactly [{name!r}]")
        for q in qs:
            if q not in queues:
                problems.append(f"worker service {name}: queue {q!r} is not a queue of the code")
            consumed.setdefault(q, name)
        if (svc.get("build") or {}).get("dockerfile") != "deploy/Dockerfile.worker":
            problems.append(f"worker service {name}: not built from deploy/Dockerfile.worker")
        if "container_name" in svc or svc.get("ports"):
            problems.append(f"worker service {name}: container_name/ports prevent `--scale {name}=N`")
        if not str(option(args, "-c", "--concurrency") or "").isdigit():
            problems.append(f"worker service {name}: no -c <concurrency>")
        if svc.get("restart") not in ("always", "unless-stopped", "on-failure"):
            problems.append(f"worker service {name}: must be restarted after an exit (restart:)")
        settings = svc.get("_settings")
        if settings is None:
            problems.append(f"worker service {name}: no SG_ environment")
        elif name in queues:
            grace = go_duration_s(svc.get("stop_grace_period", "10s"))
            wanted = needed_grace_s(queues[name], settings)
            if grace < wanted:
                problems.append(f"worker service {name}: stop_grace_period {grace:.0f} s < hard time limit "
                                f"{wanted:.0f} s (a warm shutdown would kill jobs)")
    for q in queues:
        if q not in consumed:
            problems.append(f"no compose worker service for queue {q!r}")

    gateway = services.get("gateway") or {}
    gw = argv(gateway.get("command"))
    gw_line = " ".join(gw)
    if not ("gunicorn -c" in gw_line and "gunicorn.conf.py" in gw_line and "service_gateway:create_app()" in gw_line):
        problems.append("gateway: command must be gunicorn -c gunicorn.conf.py 'service_gateway:create_app()'")
    if "/health" not in " ".join(argv((gateway.get("healthcheck") or {}).get("test"))):
        problems.append("gateway: healthcheck must call /health")
    if (gateway.get("build") or {}).get("dockerfile") != "deploy/Dockerfile.gateway":
        problems.append("gateway: not built from deploy/Dockerfile.gateway")

    flower = services.get("flower") or {}
    if argv(flower.get("command"))[:4] != ["celery", "-A", "workers", "flower"]:
        problems.append("flower: command must be celery -A workers flower")
    if not (flower.get("environment") or {}).get("FLOWER_BASIC_AUTH"):
        problems.append("flower: FLOWER_BASIC_AUTH must be set")

    for infra, image in (("rabbitmq", "rabbitmq:"), ("redis", "redis:"), ("postgres", "postgres:")):
        if not str((services.get(infra) or {}).get("image", "")).startswith(image):
            problems.append(f"no {infra} service (image {image}...)")
    env = (services.get("gateway") or {}).get("environment") or {}
    for key, scheme, host in (("SG_BROKER_URL", "amqp", "rabbitmq"), ("SG_RESULT_BACKEND", "redis", "redis"),
                              ("SG_DATABASE_URL", "postgresql", "postgres")):
        url = urlsplit(str(env.get(key, "")))
        if url.scheme != scheme or url.hostname != host:
            problems.append(f"gateway: {key} must be a {scheme}:// URL to the {host} service")
    return problems


# -- Kubernetes --------------------------------------------------------------------------------------
def pod_spec(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return spec.get("initContainers", []) + spec.get("containers", [])


def k8s_problems(docs: list[tuple[str, dict]], queues: dict[str, list[str]], runtime: Runtime) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for where, doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if not (doc.get("apiVersion") and kind and name):
            problems.append(f"{where}: a document without apiVersion, kind or metadata.name")
            continue
        if kind != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{where}: {kind}/{name} is not in namespace {NAMESPACE}")
        if name in by_kind.setdefault(kind, {}):
            problems.append(f"{where}: {kind}/{name} is defined twice")
        by_kind[kind][name] = doc

    config_maps = {n: d.get("data", {}) for n, d in by_kind.get("ConfigMap", {}).items()}
    secrets = {n: {**d.get("stringData", {}), **d.get("data", {})} for n, d in by_kind.get("Secret", {}).items()}
    claims = set(by_kind.get("PersistentVolumeClaim", {}))
    deployments = by_kind.get("Deployment", {})
    workloads = {**{f"Deployment/{n}": d for n, d in deployments.items()},
                 **{f"Job/{n}": d for n, d in by_kind.get("Job", {}).items()}}

    def pod_env(c: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                env.update(config_maps.get(source["configMapRef"]["name"], {}))
            if "secretRef" in source:
                env.update(secrets.get(source["secretRef"]["name"], {}))
        for item in c.get("env", []):
            env[item["name"]] = str(item.get("value", SAMPLE_SECRET))
        return {k: (SAMPLE_SECRET if v == PLACEHOLDER else v.replace(PLACEHOLDER, "secret")) for k, v in env.items()}

    # Every workload: labels, references, containers.
    settings_of: dict[str, Any] = {}
    for key, doc in workloads.items():
        spec = doc.get("spec", {})
        pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if doc["kind"] == "Deployment":
            selector = spec.get("selector", {}).get("matchLabels", {})
            if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{key}: selector {selector} does not match the pod labels {pod_labels}")
        volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
        for v in volumes.values():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and claim not in claims:
                problems.append(f"{key}: volume {v['name']} claims unknown PVC {claim!r}")
        for c in containers(doc):
            where = f"{key} container {c.get('name')}"
            if not c.get("image"):
                problems.append(f"{where}: no image")
            if not (c.get("command") or c.get("args")):
                problems.append(f"{where}: no command/args (say what it runs)")
            requests = (c.get("resources") or {}).get("requests") or {}
            if not {"cpu", "memory"} <= set(requests):
                problems.append(f"{where}: resources.requests needs cpu and memory")
            for source in c.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    problems.append(f"{where}: envFrom unknown ConfigMap {source['configMapRef']['name']!r}")
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    problems.append(f"{where}: envFrom unknown Secret {source['secretRef']['name']!r}")
            for item in c.get("env", []):
                ref = (item.get("valueFrom") or {})
                for kind_key, table in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
                    if kind_key in ref:
                        name, k = ref[kind_key]["name"], ref[kind_key]["key"]
                        if k not in table.get(name, {}):
                            problems.append(f"{where}: {item['name']} from {kind_key} {name}/{k}, which does not exist")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts undeclared volume {mount['name']!r}")
            if "FLOWER_UNAUTHENTICATED_API" in {e["name"] for e in c.get("env", [])}:
                problems.append(f"{where}: FLOWER_UNAUTHENTICATED_API must never be set")
            env = pod_env(c)
            if any(k.startswith("SG_") for k in env):
                settings, found = settings_problems(where, env, runtime.services)
                problems += found
                settings_of[key] = settings

    # Services and the PodDisruptionBudget select the pods of a Deployment, on a port it has.
    def deployment_for(selector: dict) -> dict | None:
        for doc in deployments.values():
            labels = doc["spec"].get("template", {}).get("metadata", {}).get("labels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                return doc
        return None
    for name, svc in by_kind.get("Service", {}).items():
        target = deployment_for(svc.get("spec", {}).get("selector", {}))
        if target is None:
            problems.append(f"Service/{name}: its selector matches no Deployment's pods")
            continue
        ports = {p.get(k) for c in containers(target) for p in c.get("ports", []) for k in ("name", "containerPort")}
        for port in svc["spec"].get("ports", []):
            if port.get("targetPort", port.get("port")) not in ports:
                problems.append(f"Service/{name}: targetPort {port.get('targetPort')!r} is not a container port")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if deployment_for(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {})) is None:
            problems.append(f"PodDisruptionBudget/{name}: its selector matches no Deployment's pods")

    # The gateway: gunicorn, probes on /ready and /health.
    gateway = deployments.get("gateway")
    if gateway is None:
        problems.append("no Deployment gateway")
    else:
        c = pod_spec(gateway)["containers"][0]
        line = " ".join(argv(c.get("command")) + argv(c.get("args")))
        if not ("gunicorn -c" in line and "gunicorn.conf.py" in line and "service_gateway:create_app()" in line):
            problems.append("Deployment/gateway: must run gunicorn -c gunicorn.conf.py 'service_gateway:create_app()'")
        ports = {p.get(k) for p in c.get("ports", []) for k in ("name", "containerPort")}
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            http = (c.get(probe) or {}).get("httpGet") or {}
            if http.get("path") != path or http.get("port") not in ports:
                problems.append(f"Deployment/gateway: {probe} must GET {path} on a container port")

    # One worker Deployment per queue, consuming exactly it, scaled by KEDA (no fixed replicas).
    worker_of: dict[str, str] = {}
    for name, doc in deployments.items():
        c = pod_spec(doc).get("containers", [{}])[0]
        qs = worker_queues(argv(c.get("command")) + argv(c.get("args")))
        if qs is None:
            continue
        where = f"Deployment/{name}"
        if c.get("command"):
            problems.append(f"{where}: set args, not command (command replaces the image's tini entrypoint)")
        if len(qs) != 1:
            problems.append(f"{where}: consumes {qs}, expected exactly one queue")
        for q in qs:
            if q not in queues:
                problems.append(f"{where}: queue {q!r} is not a queue of the code")
            elif q in worker_of:
                problems.append(f"{where}: queue {q!r} is already consumed by Deployment/{worker_of[q]}")
            else:
                worker_of[q] = name
        if "replicas" in doc["spec"]:
            problems.append(f"{where}: no replicas: field, KEDA's HPA owns the scale")
        settings = settings_of.get(f"Deployment/{name}")
        if len(qs) == 1 and qs[0] in queues and settings is not None:
            grace = pod_spec(doc).get("terminationGracePeriodSeconds", 30)
            wanted = needed_grace_s(queues[qs[0]], settings)
            if grace < wanted:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} < hard time limit "
                                f"{wanted:.0f} s (a scale-down would kill jobs)")
    for q in queues:
        if q not in worker_of:
            problems.append(f"no worker Deployment for queue {q!r}")

    # KEDA: one ScaledObject per worker Deployment, on that worker's RabbitMQ queue.
    auths = by_kind.get("TriggerAuthentication", {})
    scaled_targets: dict[str, str] = {}
    queue_of = {deployment: q for q, deployment in worker_of.items()}
    for name, so in by_kind.get("ScaledObject", {}).items():
        spec, where = so.get("spec", {}), f"ScaledObject/{name}"
        ref = spec.get("scaleTargetRef", {})
        target = ref.get("name")
        if ref.get("kind", "Deployment") != "Deployment" or target not in queue_of:
            problems.append(f"{where}: scaleTargetRef {target!r} is not a worker Deployment")
            continue
        if target in scaled_targets:
            problems.append(f"{where}: Deployment/{target} is already scaled by ScaledObject/{scaled_targets[target]}")
        scaled_targets[target] = name
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not 0 <= low <= high or high < 1:
            problems.append(f"{where}: needs 0 <= minReplicaCount <= maxReplicaCount, maxReplicaCount >= 1")
        triggers = [t for t in spec.get("triggers", []) if t.get("type") == "rabbitmq"]
        if len(triggers) != 1:
            problems.append(f"{where}: needs exactly one rabbitmq trigger")
            continue
        meta = triggers[0].get("metadata", {})
        if meta.get("queueName") != queue_of[target]:
            problems.append(f"{where}: trigger queueName {meta.get('queueName')!r} is not the queue of "
                            f"Deployment/{target} ({queue_of[target]!r})")
        value = meta.get("value")
        if meta.get("mode") not in ("QueueLength", "MessageRate") or not (
                isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value)):
            problems.append(f"{where}: trigger needs mode QueueLength|MessageRate and a numeric value, "
                            "quoted (KEDA's metadata are strings)")
        if meta.get("protocol", "auto") not in ("amqp", "http", "auto"):
            problems.append(f"{where}: trigger protocol must be amqp, http or auto")
        auth = (triggers[0].get("authenticationRef") or {}).get("name")
        if auth not in auths and not meta.get("hostFromEnv"):
            problems.append(f"{where}: authenticationRef {auth!r} is not a TriggerAuthentication")
    for deployment in queue_of:
        if deployment not in scaled_targets:
            problems.append(f"no KEDA ScaledObject for Deployment/{deployment} (queue {queue_of[deployment]!r})")
    for name, auth in auths.items():
        for ref in auth.get("spec", {}).get("secretTargetRef", []):
            if ref.get("key") not in secrets.get(ref.get("name"), {}):
                problems.append(f"TriggerAuthentication/{name}: secret {ref.get('name')}/{ref.get('key')} "
                                "does not exist")
            elif ref.get("parameter") == "host" and not str(secrets[ref["name"]][ref["key"]]).startswith("amqp"):
                problems.append(f"TriggerAuthentication/{name}: host must be an amqp:// URL")

    # The migration Job and Flower.
    job = by_kind.get("Job", {}).get("sg-db-upgrade")
    if job is None or argv(pod_spec(job)["containers"][0].get("command")) != ["sg", "db", "upgrade"]:
        problems.append("Job/sg-db-upgrade must run `sg db upgrade`")
    elif pod_spec(job).get("restartPolicy") not in ("Never", "OnFailure"):
        problems.append("Job/sg-db-upgrade: restartPolicy must be Never or OnFailure")
    flower = deployments.get("flower")
    if flower is None:
        problems.append("no Deployment flower")
    else:
        c = pod_spec(flower)["containers"][0]
        if (argv(c.get("command")) + argv(c.get("args")))[:4] != ["celery", "-A", "workers", "flower"]:
            problems.append("Deployment/flower: must run celery -A workers flower")
        if "FLOWER_BASIC_AUTH" not in {e["name"] for e in c.get("env", [])}:
            problems.append("Deployment/flower: FLOWER_BASIC_AUTH must be set (from a Secret)")
    return problems


def kubernetes_schema_problems(docs: list[tuple[str, dict]]) -> list[str]:
    """Built-in kinds against Kubernetes' own schemas (strict: unknown fields fail), oldest and newest bundled."""
    need(_importable("kubernetes_validate"), "kubernetes-validate (Kubernetes' schemas)")
    import kubernetes_validate as kv
    from kubernetes_validate.utils import all_versions
    versions = all_versions()
    problems = []
    for version in dict.fromkeys([versions[0], kv.latest_version()]):
        for where, doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError as exc:
                if not doc.get("apiVersion", "").startswith("keda.sh/"):
                    problems.append(f"{where}: {exc.message}")
            except kv.ValidationError as exc:
                path = ".".join(map(str, exc.absolute_path))
                problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']} {path}: {exc.message} "
                                f"(Kubernetes {version})")
    return problems


# -- Dockerfiles -------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if not current and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    result, stage = [], ""
    for line in lines:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.I)
            stage = m.group(1) if m else f"stage{len(result)}"
        result.append((stage, instruction, args.strip()))
    return result


def dockerfile_stages(path: Path) -> list[str]:
    return [stage for stage, instruction, _ in dockerfile_instructions(path) if instruction == "FROM"]


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out of the context when it or a parent matches the last matching pattern."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        globs = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            ignored = not negate
    return ignored


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else ["sh", "-c", args]


def dockerfile_problems(path: Path, patterns: list[str]) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(path)
    minimum = re.search(r"python_requires\s*=\s*>=\s*(\d+)\.(\d+)", (ROOT / "setup.cfg").read_text())
    for stage, instruction, args in instructions:
        if instruction == "FROM":
            m = re.match(r"python:(\d+)\.(\d+)", args)
            if m and minimum and (int(m[1]), int(m[2])) < (int(minimum[1]), int(minimum[2])):
                problems.append(f"{path.name}: {args} is older than python_requires")
        if instruction == "COPY" and "--from" not in args:
            parts = exec_form(args) if args.startswith("[") else args.split()
            for source in [p for p in parts[:-1] if not p.startswith("--")]:
                if not (ROOT / source).exists():
                    problems.append(f"{path.name}: COPY {source}: no such file in the repository")
                elif dockerignored(source, patterns):
                    problems.append(f"{path.name}: COPY {source}: excluded from the build context by .dockerignore")
    stages = {s for s, i, _ in instructions if i == "FROM"}
    for stage in stages:
        users = [a for s, i, a in instructions if s == stage and i == "USER"]
        cmd = [a for s, i, a in instructions if s == stage and i == "CMD"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{path.name} stage {stage}: must end as a non-root USER")
        if not cmd:
            problems.append(f"{path.name} stage {stage}: no CMD")
    return problems


#: Files of the packages that no installed copy needs: the Alembic template (`alembic revision`, from a checkout).
NOT_PACKAGE_DATA = {"service_gateway/migrations/script.py.mako"}


def package_data_problems(root: Path) -> list[str]:
    """The images `pip install .` (not a checkout): every non-Python file of the packages must be package data."""
    cfg = configparser.RawConfigParser()
    cfg.read(root / "setup.cfg")
    declared = {pkg: [p.strip() for p in value.split(",") if p.strip()]
                for pkg, value in (cfg["options.package_data"].items() if cfg.has_section("options.package_data")
                                   else [])}

    def matches(sub: str, pattern: str) -> bool:          # setuptools' globs: * stays within a directory
        if "**" in pattern:
            return fnmatch.fnmatchcase(sub, pattern)
        parts, globs = sub.split("/"), pattern.split("/")
        return len(parts) == len(globs) and all(fnmatch.fnmatchcase(p, g) for p, g in zip(parts, globs))

    problems = []
    for top in ("service_gateway", "workers"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts \
                    or rel in NOT_PACKAGE_DATA:
                continue
            if not any(matches(path.relative_to(root / pkg.replace(".", "/")).as_posix(), pattern)
                       for pkg, patterns in declared.items() if (root / pkg.replace(".", "/")) in path.parents
                       for pattern in patterns):
                problems.append(f"{rel} is not package data in setup.cfg: the images would not have it")
    return problems


# -- Grafana -----------------------------------------------------------------------------------------
PROMQL_FUNCTIONS = set("""
abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count count_over_time
count_values day_of_month day_of_week days_in_month delta deriv exp floor group histogram_avg histogram_count
histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase irate label_join label_replace
last_over_time ln log10 log2 max max_over_time min min_over_time minute month predict_linear present_over_time
quantile quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev stddev_over_time stdvar
stdvar_over_time sum sum_over_time time timestamp topk vector year
""".split())
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring",
                "group_left", "group_right"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms", "__all"}


def promql_problems(expr: str, known: set[str]) -> tuple[set[str], list[str]]:
    """The metric names an expression reads, and what is wrong with it."""
    problems = []
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in re.sub(r'"(?:\\.|[^"\\])*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            stack.append("!")
            break
    if stack:
        problems.append(f"unbalanced brackets in {expr!r}")
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)                       # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)                     # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                       # Grafana variables left outside matchers
    for function in re.findall(r"([A-Za-z_][\w:]*)\s*\(", text):
        if function not in PROMQL_FUNCTIONS:
            problems.append(f"unknown function {function}() in {expr!r}")
    text = re.sub(r"[A-Za-z_][\w:]*\s*\(", "(", text)
    text = re.sub(r"(?<![\w:.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)
    names = {n for n in re.findall(r"[A-Za-z_:][\w:]*", text) if n not in PROMQL_WORDS}
    for name in sorted(names - known):
        problems.append(f"{name} is not a metric of service_gateway/metrics.py (in {expr!r})")
    return names, problems


def dashboard_problems(dash: dict, families: dict[str, set[str]]) -> list[str]:
    problems = []
    known = set().union(*families.values())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            problems.append(f"dashboard: no {key}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    used: set[str] = set()
    panels = []
    for panel in dash.get("panels", []):
        panels.append(panel)
        panels += panel.get("panels", [])           # collapsed rows keep theirs inside
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append("dashboard: panel ids must be unique")
    for panel in panels:
        title = panel.get("title", "?")
        if not {"h", "w", "x", "y"} <= set(panel.get("gridPos", {})):
            problems.append(f"panel {title!r}: gridPos needs h, w, x, y")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets or not all(t.get("expr") for t in targets):
            problems.append(f"panel {title!r}: every panel needs targets with an expr")
        for target in targets:
            expr = target.get("expr", "")
            for var in re.findall(r"\$\{?(\w+)", expr):
                if var not in variables | GRAFANA_BUILTINS:
                    problems.append(f"panel {title!r}: ${var} is not a dashboard variable")
            names, found = promql_problems(expr, known)
            used |= names
            problems += [f"panel {title!r}: {p}" for p in found]
        datasource = json.dumps(panel.get("datasource"))
        if "prometheus" not in datasource and "${datasource}" not in datasource:
            problems.append(f"panel {title!r}: no Prometheus datasource")
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
        if var.get("type") == "query":
            if not m:
                problems.append(f"variable {var['name']}: expected label_values(metric, label)")
                continue
            names, found = promql_problems(m.group(1), known)
            used |= names
            problems += [f"variable {var['name']}: {p}" for p in found]
    for family, series in sorted(families.items()):
        if not series & used:
            problems.append(f"metric {family} has no panel")
    return problems


# -- secrets and paths -------------------------------------------------------------------------------
def deploy_text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    return sorted(p for p in files if p.suffix not in (".png", ".jpg"))


SECRET_KEY = re.compile(r"(PASSWORD|PASS|SECRET|TOKEN|BASIC_AUTH)$")


def secret_problems(texts: dict[str, str]) -> list[str]:
    """Credentials in URLs or secret-named keys are variables or CHANGE-ME placeholders, never values."""
    problems = []
    for name, text in texts.items():
        for m in re.finditer(r"[a-z][a-z0-9+.-]*://([^:/@\s\"']+):([^@\s\"']+)@", text):
            password = m.group(2)
            if not (password.startswith("${") or PLACEHOLDER in password or password.startswith("$")):
                problems.append(f"{name}: a password in a URL: {m.group(0)}")
        for m in re.finditer(r"^\s*#?\s*([A-Z][A-Z0-9_]*)\s*[:=]\s*(\S.*?)\s*$", text, re.M):
            key, value = m.group(1), m.group(2).split(" #")[0].strip().strip("\"'")
            if SECRET_KEY.search(key) and value and not (value.startswith("$") or PLACEHOLDER in value
                                                         or value.startswith("#")):
                problems.append(f"{name}: {key} has a literal value")
        for m in re.finditer(r"(?<![\w.-])/(?:work|home|Users|root|tmp)/\S*", text):
            problems.append(f"{name}: a path of some machine: {m.group(0)}")
    return problems


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# =====================================================================================================
# The real files
# =====================================================================================================
def test_compose_file_matches_the_compose_specification(compose):
    # As compose does it: variables interpolated first (from deploy/.env.example, CHANGE-MEs replaced).
    assert compose_schema_problems(interpolate(compose, sample_compose_env())) == []


def test_compose_runs_every_queue_the_gateway_and_flower(compose, queues, runtime):
    assert compose_problems(compose, queues, runtime) == []


def test_compose_variables_are_all_in_env_example():
    used = compose_variables(COMPOSE_FILE.read_text())
    listed = env_example()
    assert {v for v, required in used.items() if required} <= {k for k, v in listed.items() if PLACEHOLDER in v}
    assert set(used) <= set(listed), "document every optional variable in deploy/.env.example"


def test_kubernetes_manifests_are_consistent_and_complete(manifests, queues, runtime):
    assert k8s_problems(manifests, queues, runtime) == []


def test_kubernetes_manifests_match_kubernetes_schemas(manifests):
    assert kubernetes_schema_problems(manifests) == []


def test_secrets_live_only_in_the_template(manifests):
    applied = [(where, doc) for where, doc in manifests if not where.endswith(".example")]
    assert not [where for where, doc in applied if doc["kind"] == "Secret"], "Secrets go in secret.yaml.example"
    template = [doc for where, doc in manifests if where.endswith(".example")]
    assert template and all(PLACEHOLDER in str(v) for doc in template for v in doc.get("stringData", {}).values())
    # `kubectl apply -f deploy/k8s/` reads .yaml, .yml and .json only: the template is never applied.
    assert (K8S / "secret.yaml.example").suffix not in (".yaml", ".yml", ".json")
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in deploy_text_files()}
    assert secret_problems(texts) == []


def test_every_sg_variable_named_in_deploy_is_a_setting():
    known = setting_names()
    unknown = {(str(p.relative_to(ROOT)), name) for p in deploy_text_files()
               for name in re.findall(r"\bSG_[A-Z0-9][A-Z0-9_]*\b", p.read_text()) if name not in known}
    assert unknown == set()


def test_dockerfiles_build_from_the_repository():
    patterns = dockerignore_patterns()
    problems = []
    for name in ("Dockerfile.gateway", "Dockerfile.worker"):
        problems += dockerfile_problems(DEPLOY / name, patterns)
    assert problems == []
    # The context keeps what the images need and leaves out the rest (secrets, the virtualenv, git).
    for path in (".git", ".venv", "tests", "deploy/.env", "var", "service_gateway/__pycache__"):
        assert dockerignored(path, patterns), path


def test_images_get_every_file_the_packages_read():
    assert package_data_problems(ROOT) == []


def test_dockerfiles_run_what_the_docs_say():
    gateway = dockerfile_instructions(DEPLOY / "Dockerfile.gateway")
    run = " ".join(a for s, i, a in gateway if s == "gateway" and i == "RUN")
    assert 'pip install ".[server]"' in run and "[worker]" not in run   # the gateway never loads worker libraries
    cmd = " ".join(exec_form([a for s, i, a in gateway if s == "gateway" and i == "CMD"][-1]))
    assert "sg db upgrade" in cmd and "gunicorn -c" in cmd and "gunicorn.conf.py" in cmd
    assert "'service_gateway:create_app()'" in cmd and "0.0.0.0:8000" in cmd
    flower_cmd = exec_form([a for s, i, a in gateway if s == "flower" and i == "CMD"][-1])
    assert flower_cmd[:4] == ["celery", "-A", "workers", "flower"]
    assert "flower" in " ".join(a for s, i, a in gateway if s == "flower" and i == "RUN")

    worker = dockerfile_instructions(DEPLOY / "Dockerfile.worker")
    run = " ".join(a for _, i, a in worker if i == "RUN")
    assert re.search(r"apt-get install[^&]*\bffmpeg\b", run) and '".[worker]"' in run
    assert exec_form([a for _, i, a in worker if i == "ENTRYPOINT"][-1])[0].endswith("tini")
    assert exec_form([a for _, i, a in worker if i == "CMD"][-1])[:4] == ["celery", "-A", "workers", "worker"]


def test_rabbitmq_consumer_timeout_outlasts_the_longest_job(compose, runtime):
    conf = (DEPLOY / "rabbitmq" / "service-gateway.conf").read_text()
    timeout_ms = int(re.search(r"^consumer_timeout\s*=\s*(\d+)", conf, re.M).group(1))
    env = interpolate(compose["x-sg-env"], sample_compose_env())
    settings = load_settings(environ=env)
    assert timeout_ms >= 1000 * max(settings.time_limit_for(s) for s in runtime.services)
    mounts = compose["services"]["rabbitmq"]["volumes"]
    assert any(m.startswith("./rabbitmq/service-gateway.conf:/etc/rabbitmq/conf.d/") for m in mounts)


def test_monitoring_profile_scrapes_the_gateway_and_every_worker(compose, queues):
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    gateway = jobs["service-gateway"]
    assert gateway["static_configs"][0]["targets"] == ["gateway:8000"]
    token = gateway["authorization"]["credentials_file"]
    services = compose["services"]
    assert any(v.startswith("metrics-token:") and token.startswith(v.split(":")[1].rstrip("/") + "/")
               for v in services["prometheus"]["volumes"])
    assert any(f"> {token.replace('/etc/prometheus/token', '/run/sg-token')}" in c
               for c in argv(services["metrics-token"]["command"]))
    names = [n for sd in jobs["service-gateway-workers"]["dns_sd_configs"] for n in sd["names"]]
    assert sorted(names) == sorted(queues) and all(n in services for n in names)
    assert {sd["port"] for sd in jobs["service-gateway-workers"]["dns_sd_configs"]} == {
        int(services[q]["environment"]["SG_WORKER_METRICS_PORT"]) for q in queues}
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "service-gateway.yaml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert f"./grafana/service-gateway.json:{dashboards_dir}/service-gateway.json:ro" in services["grafana"]["volumes"]


def test_grafana_dashboard_reads_only_our_metrics_and_shows_them_all(dashboard):
    families = metric_series()
    assert {"sg_jobs_submitted", "sg_jobs_finished", "sg_jobs_in_flight", "sg_queue_depth", "sg_queue_consumers",
            "sg_http_request_duration_seconds", "sg_quota_refusals", "sg_auth_failures", "sg_job_duration_seconds",
            "sg_job_queue_wait_seconds", "sg_dependencies_up"} <= set(families)
    assert dashboard_problems(dashboard, families) == []


def test_docs_tell_how_to_deploy():
    ops = (ROOT / "docs" / "operations.md").read_text()
    section = ops.split("## Deploying", 1)[1].split("\n## ", 1)[0] if "## Deploying" in ops else ""
    for needle in ("docker compose -f deploy/docker-compose.yml up -d --scale transcode=4", "sg db upgrade",
                   "deploy/k8s/jobs/db-upgrade.yaml", "keda", "Flower", "Grafana", "secret.yaml.example",
                   "deploy/.env.example"):
        assert needle.lower() in section.lower(), needle
    readme = (DEPLOY / "README.md").read_text()
    for text, base in ((ops, ROOT), (readme, ROOT)):
        for path in set(re.findall(r"(?<![\w/.-])deploy/[\w./-]+", text)):
            path = path.rstrip(".")
            if re.search(r"[./]", path[len("deploy/"):]):        # deploy/gateway is kubectl's, not a path
                assert (base / path).exists() or path == "deploy/.env", path
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (DEPLOY / target).resolve().exists(), target


# =====================================================================================================
# Each checker catches what it is for (mutations of parsed copies)
# =====================================================================================================
def _doc(docs, kind, name):
    return next(doc for _, doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def _container(docs, kind, name):
    return _doc(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _drop(docs, kind, name):
    docs[:] = [(w, d) for w, d in docs if not (d["kind"] == kind and d["metadata"]["name"] == name)]


def _set(mapping, key, value):
    mapping[key] = value


COMPOSE_MUTATIONS = {
    "worker service removed": (lambda c, q: c["services"].pop("transcode"),
                               "no compose worker service for queue 'transcode'"),
    "new service in the code": (lambda c, q: _set(q, "newservice", ["newservice"]),
                                "no compose worker service for queue 'newservice'"),
    "wrong queue": (lambda c, q: _set(c["services"]["webhooks"]["command"], 5, "webhook"),
                    "worker service webhooks: consumes ['webhook']"),
    "short grace period": (lambda c, q: _set(c["services"]["transcode"], "stop_grace_period", "10m"),
                           "worker service transcode: stop_grace_period 600 s"),
    "host port on a worker": (lambda c, q: _set(c["services"]["faces"], "ports", ["9808:9808"]),
                              "prevent `--scale faces=N`"),
    "time limit of no service": (lambda c, q: _set(c["x-sg-env"], "SG_TIME_LIMITS", "transcod=7200"),
                                 "names 'transcod'"),
    "malformed setting": (lambda c, q: _set(c["x-sg-env"], "SG_PROXY_HOPS", "one"),
                          "SG_PROXY_HOPS: expected an integer"),
    "gateway not gunicorn": (lambda c, q: _set(c["services"]["gateway"], "command", ["flask", "run"]),
                             "gateway: command must be"),
    "flower without auth": (lambda c, q: _set(c["services"]["flower"]["environment"], "FLOWER_UNAUTHENTICATED_API",
                                              "true"), "FLOWER_UNAUTHENTICATED_API must never be set"),
    "unknown dependency": (lambda c, q: _set(c["services"]["gateway"]["depends_on"], "rabitmq", {}),
                           "unknown service 'rabitmq'"),
}


@pytest.mark.parametrize("mutate, expected", COMPOSE_MUTATIONS.values(), ids=COMPOSE_MUTATIONS.keys())
def test_compose_checker_catches(compose, queues, runtime, mutate, expected):
    broken, expected_queues = copy.deepcopy(compose), copy.deepcopy(queues)
    # A YAML alias (environment: *worker-env) is one object shared by the services: give each its own.
    for svc in broken["services"].values():
        if "environment" in svc:
            svc["environment"] = dict(svc["environment"])
    mutate(broken, expected_queues)
    if broken["x-sg-env"] != compose["x-sg-env"]:     # merged when loaded: carry a change to every service
        for svc in broken["services"].values():
            if any(k.startswith("SG_") for k in svc.get("environment", {})):
                svc["environment"].update(broken["x-sg-env"])
    problems = compose_problems(broken, expected_queues, runtime)
    assert any(expected in p for p in problems), problems


def test_compose_schema_checker_catches_an_unknown_key(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["transcode"]["stop_grace_periode"] = "1m"
    assert any("stop_grace_periode" in p for p in compose_schema_problems(broken))


K8S_MUTATIONS = {
    "ScaledObject removed": (lambda d, q: _drop(d, "ScaledObject", "worker-transcode"),
                             "no KEDA ScaledObject for Deployment/worker-transcode"),
    "worker Deployment removed": (lambda d, q: _drop(d, "Deployment", "worker-webhooks"),
                                  "no worker Deployment for queue 'webhooks'"),
    "new service in the code": (lambda d, q: _set(q, "newservice", ["newservice"]),
                                "no worker Deployment for queue 'newservice'"),
    "trigger on another queue": (lambda d, q: _set(_doc(d, "ScaledObject", "worker-faces")["spec"]["triggers"][0]
                                                   ["metadata"], "queueName", "transcode"),
                                 "trigger queueName 'transcode'"),
    "ScaledObject on nothing": (lambda d, q: _set(_doc(d, "ScaledObject", "worker-faces")["spec"]["scaleTargetRef"],
                                                  "name", "worker-face"), "scaleTargetRef 'worker-face'"),
    "fixed replicas": (lambda d, q: _set(_doc(d, "Deployment", "worker-speech")["spec"], "replicas", 2),
                       "no replicas: field"),
    "short grace period": (lambda d, q: _set(_doc(d, "Deployment", "worker-transcode")["spec"]["template"]["spec"],
                                             "terminationGracePeriodSeconds", 30), "terminationGracePeriodSeconds 30"),
    "two queues": (lambda d, q: _set(_container(d, "Deployment", "worker-probe"), "args",
                                     ["celery", "-A", "workers", "worker", "-Q", "probe,faces"]),
                   "consumes ['probe', 'faces']"),
    "command hides tini": (lambda d, q: _set(_container(d, "Deployment", "worker-probe"), "command",
                                             ["celery", "-A", "workers", "worker", "-Q", "probe"]),
                           "set args, not command"),
    "readiness on /health": (lambda d, q: _set(_container(d, "Deployment", "gateway")["readinessProbe"]["httpGet"],
                                               "path", "/health"), "readinessProbe must GET /ready"),
    "selector mismatch": (lambda d, q: _set(_doc(d, "Deployment", "gateway")["spec"]["selector"]["matchLabels"],
                                            "app.kubernetes.io/component", "gw"), "does not match the pod labels"),
    "no resource requests": (lambda d, q: _container(d, "Deployment", "worker-loudness")["resources"].pop("requests"),
                             "resources.requests needs cpu and memory"),
    "unknown Secret": (lambda d, q: _set(_container(d, "Deployment", "flower")["envFrom"][1]["secretRef"], "name",
                                         "sg-secret"), "envFrom unknown Secret 'sg-secret'"),
    "bad setting value": (lambda d, q: _set(_doc(d, "ConfigMap", "sg-config")["data"], "SG_JOB_LEASE_S", "1"),
                          "SG_JOB_LEASE_S: expected a number >= 2"),
    "Service port": (lambda d, q: _set(_doc(d, "Service", "gateway")["spec"]["ports"][0], "targetPort", "web"),
                     "targetPort 'web'"),
    "migration command": (lambda d, q: _set(_container(d, "Job", "sg-db-upgrade"), "command", ["sg", "db", "migrate"]),
                          "must run `sg db upgrade`"),
    "KEDA secret key": (lambda d, q: _set(_doc(d, "TriggerAuthentication", "sg-rabbitmq")["spec"]["secretTargetRef"][0],
                                          "key", "BROKER_URL"), "sg-secrets/BROKER_URL does not exist"),
}


@pytest.mark.parametrize("mutate, expected", K8S_MUTATIONS.values(), ids=K8S_MUTATIONS.keys())
def test_kubernetes_checker_catches(manifests, queues, runtime, mutate, expected):
    broken, expected_queues = copy.deepcopy(manifests), copy.deepcopy(queues)
    mutate(broken, expected_queues)
    problems = k8s_problems(broken, expected_queues, runtime)
    assert any(expected in p for p in problems), problems


def test_kubernetes_schema_checker_catches_an_unknown_field(manifests):
    broken = copy.deepcopy(manifests)
    _container(broken, "Deployment", "worker-faces")["resource"] = {}
    _doc(broken, "Service", "flower")["spec"]["ports"][0]["port"] = "5555"
    problems = kubernetes_schema_problems([(w, d) for w, d in broken
                                           if d["metadata"]["name"] in ("worker-faces", "flower")])
    assert any("worker-faces" in p and "resource" in p for p in problems), problems
    assert any("Service/flower" in p for p in problems), problems


@pytest.mark.parametrize("expr, expected", [
    ("sum(rate(sg_jobs_submited_total[5m]))", "sg_jobs_submited_total is not a metric"),
    ("sum(rate(sg_jobs_submitted[5m]))", "sg_jobs_submitted is not a metric"),      # the family, not the series
    ("histogram_quantil(0.9, sum by (le) (rate(sg_job_duration_seconds_bucket[5m])))", "unknown function"),
    ("sum(rate(sg_jobs_submitted_total{service=~\"$servce\"}[5m]))", "$servce is not a dashboard variable"),
    ("sum(rate(sg_jobs_submitted_total[5m])", "unbalanced brackets"),
    ("up{job=\"service-gateway\"}", "up is not a metric"),
])
def test_dashboard_checker_catches_a_bad_expression(dashboard, expr, expected):
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in broken["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = expr
    problems = dashboard_problems(broken, metric_series())
    assert any(expected in p for p in problems), problems


def test_dashboard_checker_wants_every_metric_shown(dashboard):
    broken = copy.deepcopy(dashboard)
    broken["panels"] = [p for p in broken["panels"]
                        if "sg_auth_failures" not in json.dumps(p.get("targets", []))]
    assert "metric sg_auth_failures has no panel" in dashboard_problems(broken, metric_series())


def test_dockerfile_checker_catches_an_excluded_or_missing_copy(tmp_path):
    dockerfile = tmp_path / "Dockerfile.worker"
    dockerfile.write_text("FROM python:3.10-slim\nCOPY tests ./tests\nCOPY nothing-here ./x\nUSER root\nCMD [\"x\"]\n")
    problems = dockerfile_problems(dockerfile, dockerignore_patterns())
    assert any("COPY tests" in p and ".dockerignore" in p for p in problems), problems
    assert any("COPY nothing-here" in p for p in problems), problems
    assert any("python_requires" in p for p in problems) and any("non-root USER" in p for p in problems)


def test_package_data_checker_catches_an_undeclared_file(tmp_path):
    (tmp_path / "service_gateway" / "assets").mkdir(parents=True)
    (tmp_path / "workers").mkdir()
    (tmp_path / "service_gateway" / "assets" / "app.js").write_text("")
    (tmp_path / "service_gateway" / "assets" / "deep").mkdir()
    (tmp_path / "service_gateway" / "assets" / "deep" / "x.css").write_text("")
    (tmp_path / "setup.cfg").write_text("[options.package_data]\nservice_gateway = assets/*.js\n")
    assert package_data_problems(tmp_path) == [
        "service_gateway/assets/deep/x.css is not package data in setup.cfg: the images would not have it"]


def test_secret_and_setting_checkers_catch_leaks_and_typos():
    problems = secret_problems({"x.yml": "SG_BROKER_URL: amqp://sg:hunter2@rabbitmq:5672//\n"
                                         "POSTGRES_PASSWORD: hunter2\nvolumes: [/work/main/var:/data]\n"})
    assert len(problems) == 3, problems
    assert secret_problems({"x.yml": "url: amqp://sg:${RABBITMQ_PASSWORD}@rabbitmq//\nA_PASSWORD: CHANGE-ME\n"}) == []
    assert compose_variables("${A:?set A} ${B:-b} $$NOT_ONE $C") == {"A": True, "B": False, "C": False}
    assert "SG_BROKER_URI" not in setting_names() and "SG_BROKER_URL" in setting_names()
    assert {"SG_GUNICORN_WORKERS", "SG_GUNICORN_THREADS"} <= setting_names()
