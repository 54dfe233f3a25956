"""deploy/check.py passes on the shipped files and names the problem in each kind of broken one.

The install section (a real pip install and a served replica, about a minute) runs in `make deploy-check`."""

from __future__ import annotations

import importlib.util
import re
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
    "model server on a port the policy blocks": (
        "configmap.yaml",
        "CHAT_LLM_URL: http://ollama:11434",
        "CHAT_LLM_URL: http://models:9000/v1",
        "egress does not allow TCP 9000, which CHAT_LLM_URL needs (models:9000)",
    ),
    "postgres behind a pooler on a port the policy blocks": (
        "secret.yaml",
        "@postgres:5432/chat",
        "@pgbouncer:6432/chat",
        "egress does not allow TCP 6432, which CHAT_DATABASE_URL needs (pgbouncer:6432)",
    ),
    "the guide's connection sum is stale": (
        "hpa.yaml",
        "maxReplicas: 9",
        "maxReplicas: 8",
        "Sizing must state the base's connection sum: (8 + 1) \N{MULTIPLICATION SIGN} (8 + 1) + 1 = 82 of 97",
    ),
}


@pytest.mark.parametrize("name", K8S_BREAKAGES)
def test_broken_manifest_fails(deploy: Path, name: str) -> None:
    file, old, new, fragment = K8S_BREAKAGES[name]
    edit(deploy / "k8s" / "base" / file, old, new)
    only(check.check_k8s(deploy), fragment)


def test_the_guide_quotes_the_configmap(deploy: Path) -> None:
    edit(deploy / "README.md", "| `CHAT_DATABASE_POOL_SIZE` | `8` |", "| `CHAT_DATABASE_POOL_SIZE` | `4` |")
    only(check.check_k8s(deploy), "CHAT_DATABASE_POOL_SIZE is `4` in its table, '8' in ConfigMap")


def _guide_overlay() -> str:
    """The guide's example overlay that changes the NetworkPolicy's ports."""
    blocks = re.findall(r"```yaml\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.S)
    [block] = [b for b in blocks if "kind: NetworkPolicy" in b]
    return block


def test_the_guides_networkpolicy_patch_lets_out_another_port(deploy: Path) -> None:
    overlay = deploy / "k8s" / "overlays" / "prod"
    overlay.mkdir(parents=True)
    header = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../base]\n"
    (overlay / "kustomization.yaml").write_text(header + _guide_overlay())

    [policy] = [o for o in check.render_kustomization(overlay) if o["kind"] == "NetworkPolicy"]

    assert [p["port"] for p in policy["spec"]["egress"][1]["ports"]] == [5432, 9000, 4317]
    assert check._check_egress(policy, {"CHAT_LLM_URL": "http://models:9000/v1"}) == []


def _objects(items: list[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(items, key=lambda o: (str(o["kind"]), str(o["metadata"]["name"])))  # type: ignore[index]


def test_renders_resources_without_kubectl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "_tool", lambda name: None)
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


def test_direct_rendering_equals_kustomize(monkeypatch: pytest.MonkeyPatch) -> None:
    with_kubectl = check.render_kustomization(DEPLOY / "k8s" / "base")
    monkeypatch.setattr(check, "_tool", lambda name: None)
    assert _objects(check.render_kustomization(DEPLOY / "k8s" / "base")) == _objects(with_kubectl)


def test_direct_rendering_refuses_transformers(deploy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "_tool", lambda name: None)
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
    "another model than the k8s base": (
        lambda d: edit(
            d / "compose.yaml",
            "CHAT_DEFAULT_MODEL: ${CHAT_DEFAULT_MODEL:-llama3.2}",
            "CHAT_DEFAULT_MODEL: ${CHAT_DEFAULT_MODEL:-llama3.2:1b}",
        ),
        "chat-service CHAT_DEFAULT_MODEL is 'llama3.2:1b', the k8s ConfigMap's is 'llama3.2'",
    ),
    "pulling another model than it serves": (
        lambda d: edit(d / "compose.yaml", '"pull", "${CHAT_DEFAULT_MODEL:-llama3.2}"', '"pull", "qwen2.5:0.5b"'),
        "ollama-pull pulls 'qwen2.5:0.5b', not the model chat-service serves",
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
