"""deploy/check.py passes on the shipped files and names the problem in each kind of broken one.

The install section (a real pip install and a served replica, about a minute) runs in `make deploy-check`."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

DEPLOY = Path(__file__).parents[2] / "deploy"


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_check", DEPLOY / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check = _load_check()


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ to break (its compose build context, `..`, is tmp_path)."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path.name} exactly once"
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("section", ["dockerfile", "compose", "k8s"])
def test_shipped_files_pass(section: str) -> None:
    assert check.SECTIONS[section](DEPLOY) == []


def only(problems: list[str], fragment: str) -> None:
    assert problems, "the broken file passed"
    assert any(fragment in p for p in problems), problems


# ------------------------------------------------------------------------------------------- Kubernetes

K8S_BREAKAGES: dict[str, tuple[str, str, str, str]] = {
    # name: (file, old, new, expected fragment)
    "wrong type": ("deployment.yaml", "replicas: 3", "replicas: three", "is not of type 'integer'"),
    "unknown field (strict)": ("deployment.yaml", "livenessProbe:", "livenesProbe:", "livenesProbe"),
    "probe on the wrong port": (
        "deployment.yaml",
        "            grpc:\n              port: 50051\n              service: chat.v1.ChatService",
        "            grpc:\n              port: 50052\n              service: chat.v1.ChatService",
        "readinessProbe probes port 50052",
    ),
    "grace shorter than the shutdown": (
        "configmap.yaml",
        'CHAT_SHUTDOWN_GRACE_SECONDS: "25"',
        'CHAT_SHUTDOWN_GRACE_SECONDS: "60"',
        "terminationGracePeriodSeconds 45 must exceed",
    ),
    "misspelt setting": ("configmap.yaml", "CHAT_LOG_LEVEL:", "CHAT_LOGLEVEL:", "CHAT_LOGLEVEL is not a setting"),
    "service selects nothing": (
        "service.yaml",
        "    app.kubernetes.io/component: server\n  ports:",
        "    app.kubernetes.io/component: api\n  ports:",
        "Service chat-service: its selector matches no Deployment pod",
    ),
    "no headless service": ("service-headless.yaml", "  clusterIP: None\n", "", "no headless Service"),
    "service migrates on start": (
        "configmap.yaml",
        'CHAT_AUTO_MIGRATE: "false"',
        'CHAT_AUTO_MIGRATE: "true"',
        "CHAT_AUTO_MIGRATE must be false",
    ),
    "more connections than Postgres allows": (
        "hpa.yaml",
        "maxReplicas: 9",
        "maxReplicas: 10",
        "11 pods (maxReplicas + maxSurge) x (pool 8 + 1) + 1 = 100 Postgres connections, more than the 97",
    ),
    "liveness restarts a draining pod": (
        "deployment.yaml",
        "            failureThreshold: 6",
        "            failureThreshold: 3",
        "livenessProbe tolerates 30 s of NOT_SERVING",
    ),
    "job does not migrate": ("job-migrate.yaml", 'args: ["migrate"]', 'args: ["serve"]', "must run `migrate`"),
}


@pytest.mark.parametrize("name", K8S_BREAKAGES)
def test_broken_manifest_fails(deploy: Path, name: str) -> None:
    file, old, new, fragment = K8S_BREAKAGES[name]
    edit(deploy / "k8s" / "base" / file, old, new)
    only(check.check_k8s(deploy), fragment)


def _objects(items: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(items, key=lambda o: (str(o["kind"]), str(o["metadata"]["name"])))  # type: ignore[index]


def test_renders_resources_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    rendered = check.render_kustomization(DEPLOY / "k8s" / "base")
    assert [(o["kind"], o["metadata"]["name"]) for o in _objects(rendered)] == [
        ("ConfigMap", "chat-service-config"),
        ("Deployment", "chat-service"),
        ("HorizontalPodAutoscaler", "chat-service"),
        ("Job", "chat-service-migrate"),
        ("NetworkPolicy", "chat-service"),
        ("PodDisruptionBudget", "chat-service"),
        ("Secret", "chat-service-secrets"),
        ("Service", "chat-service"),
        ("Service", "chat-service-headless"),
        ("ServiceAccount", "chat-service"),
    ]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed here")
def test_direct_rendering_equals_kustomize(monkeypatch: pytest.MonkeyPatch) -> None:
    with_kubectl = check.render_kustomization(DEPLOY / "k8s" / "base")
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    assert _objects(check.render_kustomization(DEPLOY / "k8s" / "base")) == _objects(with_kubectl)


def test_direct_rendering_refuses_transformers(deploy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    with (deploy / "k8s" / "base" / "kustomization.yaml").open("a") as file:
        file.write("namePrefix: staging-\n")
    only(check.check_k8s(deploy), "only `resources` can be rendered")


# ---------------------------------------------------------------------------------------------- compose

COMPOSE_BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "not the compose schema": (
        lambda d: edit(d / "compose.yaml", '    restart: "no"\n', '    restart: "no"\n    bogus_key: 1\n'),
        "compose schema",
    ),
    "service starts before migrations finish": (
        lambda d: edit(d / "compose.yaml", "condition: service_completed_successfully", "condition: service_started"),
        "service_completed_successfully",
    ),
    "stop grace shorter than the shutdown": (
        lambda d: edit(d / "compose.yaml", "stop_grace_period: 30s", "stop_grace_period: 10s"),
        "stop_grace_period must exceed",
    ),
    "exporting to nowhere": (
        lambda d: edit(d / "compose.yaml", "http://otel-collector:4317", "http://otel-collector:4318"),
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ),
    "collector pipeline names an undefined exporter": (
        lambda d: edit(d / "otel" / "collector.yaml", "exporters: [debug]", "exporters: [prometheus]"),
        "undefined exporter prometheus",
    ),
    "misspelt setting": (
        lambda d: edit(d / "compose.yaml", "CHAT_LLM_URL:", "CHAT_LLM_ULR:"),
        "CHAT_LLM_ULR is not a setting",
    ),
}


@pytest.mark.parametrize("name", COMPOSE_BREAKAGES)
def test_broken_compose_fails(deploy: Path, name: str) -> None:
    breakage, fragment = COMPOSE_BREAKAGES[name]
    breakage(deploy)
    only(check.check_compose(deploy), fragment)


# ------------------------------------------------------------------------------------------- Dockerfile

DOCKERFILE_BREAKAGES: dict[str, tuple[str, str, str]] = {
    "runs as root": ("USER 10001:10001", "USER root", "runs as root"),
    "toolchain in the runtime image": (
        "libgomp1 \\\n        && rm",
        "libgomp1 build-essential \\\n        && rm",
        "build tools installed in the runtime stage",
    ),
    "health check not over gRPC": (
        'CMD ["chat-service", "health", "--timeout", "3"]',
        'CMD ["true"]',
        "HEALTHCHECK must be",
    ),
    "copied source left out of the build context": (
        "COPY generated/ generated/\n",
        "COPY generated/ generated/\nCOPY tests/ tests/\n",
        "COPY tests/ is excluded by Dockerfile.dockerignore",
    ),
    "hadolint finding": ("WORKDIR /src\n", "WORKDIR /src\nRUN cd /tmp && ls\n", "DL3003"),
}


@pytest.mark.parametrize("name", DOCKERFILE_BREAKAGES)
def test_broken_dockerfile_fails(deploy: Path, name: str) -> None:
    old, new, fragment = DOCKERFILE_BREAKAGES[name]
    edit(deploy / "Dockerfile", old, new)
    only(check.check_dockerfile(deploy), fragment)


def test_dockerfile_parser_joins_continuations_and_drops_comments() -> None:
    parsed = check.Dockerfile.parse(
        "ARG V=1\nFROM base:${V} AS builder\nRUN --mount=type=cache,target=/c a \\\n  # note\n  && b\n"
        'FROM base AS runtime\nENV A=1 B="two words"\nCMD ["serve"]\n'
    )
    assert [s.name for s in parsed.stages] == ["builder", "runtime"]
    run = parsed.stages[0].instructions[0]
    assert (run.keyword, run.flags, run.args, run.line) == ("RUN", ["--mount=type=cache,target=/c"], "a  && b", 3)
    assert check._env_pairs(parsed.stages[1].instructions[0].args) == [("A", "1"), ("B", "two words")]
    assert parsed.stages[1].instructions[1].exec_form() == ["serve"]
