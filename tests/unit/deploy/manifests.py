"""Reading the deployment files (compose.yaml, deploy/) and what ragtune reads and serves, for
the offline checks in this folder. Nothing here needs Docker, Kubernetes or Helm."""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel

from ragtune.settings import Settings

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = DEPLOY / "api" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = DEPLOY / "compose" / "env.example"
K8S = DEPLOY / "k8s"
QDRANT_VALUES = DEPLOY / "qdrant" / "values.yaml"
# Qdrant's Helm chart, as released (chart 1.19.0): its Chart.yaml and default values.yaml.
QDRANT_CHART = REPO.parent / "shared" / "deploy" / "qdrant-helm-1.19.0"
# The image deploy/api/Dockerfile builds, as compose tags it and as deploy/k8s/ names it.
RAGTUNE_IMAGES = ("ragtune-api", "ghcr.io/your-org/ragtune")
# The Helm release name deploy/qdrant/values.yaml documents (its Service is named after it).
QDRANT_RELEASE = "qdrant"
# The Kubernetes Secret deploy/k8s/ refers to, made from an env file like env.example.
SECRET_NAME = "ragtune-secrets"
# env.example lines that only compose reads (variables of compose.yaml itself).
COMPOSE_ONLY_KEYS = {"COMPOSE_PROFILES", "BASE_MODEL_DIR"}
# Environment variables of other programs' images, by the image that reads them.
FOREIGN_ENV = {
    "qdrant/qdrant": {"QDRANT__SERVICE__API_KEY"},
    "vllm/vllm-openai": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING", "HF_HUB_OFFLINE", "HOME"},
    "prom/prometheus": set(),
}
# vLLM's OpenAI server's health endpoint (not one of ragtune's).
VLLM_HEALTH = "/health"
# compose.yaml's ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def need_tool(path: Path | str | None, what: str, make_target: str) -> str:
    """The tool's path; skips the test when it is missing, but fails it under CI=true."""
    found = shutil.which(str(path)) if path else None
    if found:
        return found
    message = f"{what} is missing: run `make {make_target}`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def need_chart() -> Path:
    if (QDRANT_CHART / "values.yaml").is_file():
        return QDRANT_CHART
    message = f"the Qdrant chart's default values are not at {QDRANT_CHART}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def yaml_files() -> list[Path]:
    """compose.yaml and every YAML file under deploy/."""
    found = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return [COMPOSE, *sorted(found)]


# The loaders below are cached (one read per test session): callers must not change what they
# return.

# --- what ragtune reads and serves ------------------------------------------------------------


@functools.cache
def setting_env_names() -> frozenset[str]:
    """Every environment variable ragtune's Settings reads: RAGTUNE_<FIELD> and
    RAGTUNE_<SECTION>__<FIELD>."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", ""))
    names = set()
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names |= {f"{prefix}{name}{delimiter}{sub}".upper() for sub in section.model_fields}
        else:
            names.add(f"{prefix}{name}".upper())
    return frozenset(names)


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a process with exactly this environment builds."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


@functools.cache
def served_paths() -> frozenset[str]:
    """Every path the API serves (admin included), from the app's own OpenAPI schema; nothing
    is started (create_app loads nothing until its lifespan runs)."""
    from service.app import create_app

    app = create_app(Settings(admin={"token": "a-real-admin-token-0123456789"}))
    return frozenset(app.openapi()["paths"])


# --- compose ------------------------------------------------------------------------------------


def interpolate(value: str, shell: dict[str, str]) -> str:
    """compose's variable substitution, for the forms compose.yaml uses."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = shell.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and empty:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if op is not None and op.endswith("-") and empty:
            return arg
        return current or ""

    return _VARIABLE.sub(one, value)


@functools.cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


@functools.cache
def env_example() -> dict[str, str]:
    """deploy/compose/env.example's KEY=value lines."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"env.example: not KEY=value: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def compose_shell(**overrides: str) -> dict[str, str]:
    """What compose interpolates with: env.example, with a real admin token."""
    return {**env_example(), "RAGTUNE_ADMIN__TOKEN": "a-real-admin-token-0123456789", **overrides}


def service_env(service: str, shell: dict[str, str]) -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    assert isinstance(environment, dict), f"compose.yaml {service}: environment as a mapping"
    return {k: interpolate(str(v), shell) for k, v in environment.items()}


def profiles_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles", []))


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # 0 for the first FROM's stage


@functools.cache
def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


@functools.cache
def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV, KEY=value pairs (quotes not used in this Dockerfile)."""
    final = max(i.stage for i in dockerfile())
    env = {}
    for instruction in dockerfile():
        if instruction.keyword == "ENV" and instruction.stage == final:
            for pair in instruction.args.split():
                key, sep, value = pair.partition("=")
                assert sep, f"Dockerfile ENV {pair!r}: write KEY=value"
                env[key] = value
    return env


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context:
    the last pattern matching it or one of its parent folders decides, `!` lets it back in."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        if any(_docker_match(glob, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _docker_match(glob: str, path: str) -> bool:
    # Go's filepath.Match: `*` stays within a path element; Docker adds `**` for any depth.
    regex = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif glob[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif glob[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(glob[i]), i + 1
    return re.fullmatch(regex, path) is not None


# --- Kubernetes ---------------------------------------------------------------------------------


@functools.cache
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
    return loaded


@functools.cache
def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of the files kustomization.yaml lists, with its file."""
    return [
        (K8S / name, doc)
        for name in kustomization()["resources"]
        for doc in load_yaml_all(K8S / name)
    ]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in k8s_objects() if o["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """The pod template of every workload, by the workload's kind/name."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for _, o in k8s_objects()
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    }


def pod_labels() -> dict[str, dict[str, str]]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["metadata"]["labels"]
        for _, o in k8s_objects()
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    }


def image_name(image: str) -> str:
    """The repository part of an image reference: registry and path, without tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def runs_ragtune(container: dict[str, Any]) -> bool:
    return image_name(container["image"]) in RAGTUNE_IMAGES


def container_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The environment the container gets: the image's (ragtune's Dockerfile), its ConfigMaps
    (envFrom), then `env`, with each secretKeyRef read from `secrets`."""
    env = dict(dockerfile_env()) if runs_ragtune(container) else {}
    configmaps = objects("ConfigMap")
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            if ref["key"] in secrets or not ref.get("optional", False):
                env[var["name"]] = secrets[ref["key"]]
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
