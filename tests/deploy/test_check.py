"""deploy/check.py passes on the shipped files and names the problem in each kind of broken one.

The install section (a real pip install and a served replica, about a minute) runs in `make deploy-check`. The
policy section runs checkov through pipx: its first run makes checkov's environment (about a minute when pip's
cache has the wheels), hence the longer time limit of those tests."""

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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("section", ["dockerfile", "compose", "k8s", "policy"])
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


def test_kubectl_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "_tool", lambda name: None)
    only(check.check_k8s(DEPLOY), "kubectl is not installed")


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
    "runs as root": ("USER 10001:10001", "USER root", "DL3002"),  # hadolint: the last USER should not be root
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


def test_dockerfile_stages_and_env(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG V=1\nFROM base:${V} AS builder\nRUN --mount=type=cache,target=/c a \\\n  # note\n  && b\n"
        'from base AS runtime\nENV A=1 B="two words"\nENV LEGACY two words\nCMD ["serve"]\n'
    )
    global_args, stages = check.parse_dockerfile(tmp_path / "Dockerfile")
    assert [a.value for a in global_args] == [("V=1",)]
    assert [(s.name, s.base) for s in stages] == [("builder", "base:${V}"), ("runtime", "base")]
    [run] = stages[0].all("RUN")
    assert (run.flags, run.start_line) == (("--mount=type=cache,target=/c",), 3)
    assert [check.env_pairs(e) for e in stages[1].all("ENV")] == [
        [("A", "1"), ("B", "two words")],
        [("LEGACY", "two words")],
    ]
    assert stages[1].exec_form("CMD") == ["serve"]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("service", False),
        ("service/storage/database.py", False),
        ("generated/chat/v1/chat_pb2.py", False),
        ("deploy/llama-wheel.sh", False),  # `!` brings a file back from under a directory `*` left out
        ("deploy/README.md", True),  # `!README.md` is anchored at the root: not every README.md
        ("deploy", True),
        ("tests/unit/test_intent.py", True),  # `*` matches `tests`, and so what is under it
        ("service/__pycache__", True),
        ("service/storage/__pycache__/database.cpython-311.pyc", True),  # `**` at any depth
        (".venv/bin/python", True),
    ],
)
def test_the_build_context_follows_dockers_rules(path: str, excluded: bool) -> None:
    """What the image's COPY lines rely on, by Docker's matching rules (where gitignore's would differ on
    deploy/README.md and tests/...)."""
    excludes = check.build_context_excludes((DEPLOY / "Dockerfile.dockerignore").read_text())
    assert excludes(path) is excluded


def test_double_star_also_matches_no_directory() -> None:
    excludes = check.build_context_excludes("# docs\n**/*.md\n!service/**/*.md\n")
    assert [excludes(p) for p in ("README.md", "deploy/README.md", "service/coaching/NOTES.md")] == [True, True, False]


# ----------------------------------------------------------------------------------------------- policy

POLICY_BREAKAGES: dict[str, tuple[str, str, str, str]] = {
    # name: (file under deploy/, old, new, the checkov check that catches it)
    "pod may run as root": (
        "k8s/base/deployment.yaml",
        "        runAsNonRoot: true\n        runAsUser: 10001\n",
        "        runAsUser: 0\n",
        "CKV_K8S_23",
    ),
    "no limits": (
        "k8s/base/deployment.yaml",
        '            limits:\n              cpu: "1"\n',
        "            limits:\n",
        "CKV_K8S_11",
    ),
    "policy selects other pods": (
        "k8s/base/networkpolicy.yaml",
        "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: chat-service\n",
        "  podSelector:\n    matchLabels:\n      app.kubernetes.io/name: chat\n",
        "CKV2_K8S_6",
    ),
    "image without a USER": ("Dockerfile", "USER 10001:10001\n", "", "CKV_DOCKER_3"),
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", POLICY_BREAKAGES)
def test_policy_breakage_fails(deploy: Path, name: str) -> None:
    file, old, new, check_id = POLICY_BREAKAGES[name]
    edit(deploy / file, old, new)
    only(check.check_policy(deploy), f"checkov {check_id} ")
