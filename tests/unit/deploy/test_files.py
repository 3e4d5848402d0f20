"""Every deployment file parses, and every image it runs is pinned to an exact version: no
`latest`, no tag left to a variable, in compose.yaml, deploy/k8s/, the Helm values and the
Dockerfile's FROM lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.unit.deploy.manifests import (
    QDRANT_VALUES,
    REPO,
    compose,
    dockerfile,
    k8s_objects,
    load_yaml,
    pod_specs,
    yaml_files,
)

# name:tag with an exact version (X.Y.Z, a leading v allowed), or a digest.
PINNED = re.compile(r"[\w./-]+(:v?\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?")


def pinned(image: str) -> bool:
    match = PINNED.fullmatch(image)
    return match is not None and (match[1] is not None or match[2] is not None)


def images() -> list[tuple[str, str]]:
    """(where, image) for every image the deployment files run."""
    found = [(f"compose.yaml {n}", s["image"]) for n, s in compose()["services"].items()]
    found += [
        (f"deploy/k8s {workload}", container["image"])
        for workload, spec in pod_specs().items()
        for container in spec.get("initContainers", []) + spec["containers"]
    ]
    stages = set()
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            image, *alias = instruction.args.split()
            if image not in stages:
                found.append(("deploy/api/Dockerfile FROM", image))
            if alias:
                stages.add(alias[-1])
    helm = load_yaml(QDRANT_VALUES)["image"]
    found.append(("deploy/qdrant/values.yaml", f"qdrant/qdrant:{helm['tag']}"))
    return found


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_file_parses(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert any(documents), f"{path} is empty"


def test_every_kubernetes_file_is_read() -> None:
    assert {p.name for p, _ in k8s_objects()} >= {"api-deployment.yaml", "vllm-statefulset.yaml"}


@pytest.mark.parametrize("where_image", images(), ids=lambda w: f"{w[0]}: {w[1]}")
def test_image_is_pinned(where_image: tuple[str, str]) -> None:
    where, image = where_image
    assert pinned(image), f"{where}: {image} is not pinned to an exact version"


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("qdrant/qdrant:v1.19.0", True),
        ("python:3.11.13-slim-bookworm", True),
        ("ghcr.io/org/ragtune:0.1.0", True),
        ("vllm/vllm-openai:latest", False),
        ("vllm/vllm-openai", False),
        ("python:3.11-slim", False),
        ("vllm/vllm-openai:${VLLM_IMAGE_TAG:-latest}", False),
        ("busybox@sha256:" + "a" * 64, True),
    ],
)
def test_what_pinned_means(image: str, ok: bool) -> None:
    assert pinned(image) is ok


def test_vllm_images_are_the_version_the_vllm_cpu_tier_tests() -> None:
    script = (REPO / "deploy" / "vllm" / "build-venv.sh").read_text(encoding="utf-8")
    tested = re.search(r'VLLM_CPU_VERSION:-([\d.]+)\}"', script)
    assert tested, "deploy/vllm/build-venv.sh no longer names its vllm-cpu version"
    vllm = [image for _, image in images() if image.startswith("vllm/vllm-openai:")]
    assert len(vllm) == 2, "compose.yaml and deploy/k8s each run vLLM"
    assert set(vllm) == {f"vllm/vllm-openai:v{tested[1]}"}
