"""compose.yaml hands ragtune settings it reads, in every profile: the containers agree with
each other (vLLM's flags with the API's settings, the adapter root at one path in both,
Prometheus with the API replicas), and `docker-compose config` accepts the file.

compose's `${VAR:-default}` interpolation is done here as compose does it (manifests.py), so
most checks need no Docker; the `config` check needs docker-compose (or `docker compose`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ragtune.settings import Settings
from tests.unit.deploy.manifests import (
    COMPOSE,
    FOREIGN_ENV,
    RAGTUNE_IMAGES,
    REPO,
    VLLM_HEALTH,
    compose,
    compose_shell,
    dockerfile_env,
    env_example,
    image_name,
    interpolate,
    load_yaml,
    need_tool,
    profiles_of,
    served_paths,
    service_env,
    setting_env_names,
    settings_from,
)

ADMIN_TOKEN = "a-real-admin-token-0123456789abcdef"
PROFILES = ("gpu", "cpu", "ingest", "metrics")
# The services that run ragtune's image, and what each must be.
API_SERVICES = ("api", "api-cpu")


def container_settings(service: str, shell: dict[str, str]) -> Settings:
    """The Settings the service's container builds: the image's ENV, then compose's."""
    return settings_from({**dockerfile_env(), **service_env(service, shell)})


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def enabled(profile: str) -> set[str]:
    """The services `docker compose --profile PROFILE up` starts."""
    return {
        name
        for name, spec in services().items()
        if not profiles_of(spec) or profile in spec["profiles"]
    }


def flags(command: list[str]) -> dict[str, str]:
    """vLLM's --name=value (or bare --name) arguments."""
    found = {}
    for arg in command:
        name, _, value = arg.partition("=")
        found[name] = value
    return found


def mounts(service: str, shell: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """container path -> (volume or host path, read-only) for the service's volumes."""
    found = {}
    for entry in services()[service].get("volumes", []):
        source, target, *mode = interpolate(entry, shell).split(":")
        found[target] = (source, mode == ["ro"])
    return found


# --- settings: QDRANT_API_KEY unset, set, a placeholder; the admin token ----------------------


def test_compose_starts_in_production_without_a_qdrant_key() -> None:
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN}
    env = service_env("api", shell)
    assert env["RAGTUNE_QDRANT__API_KEY"] == ""  # what compose passes for an unset key
    assert service_env("qdrant", shell)["QDRANT__SERVICE__API_KEY"] == ""
    settings = container_settings("api", shell)
    assert settings.environment == "production"
    assert settings.qdrant.api_key is None
    assert settings.admin.token is not None


def test_compose_passes_a_qdrant_key_to_both_sides() -> None:
    key = "a-real-qdrant-key-0123456789"
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN, "QDRANT_API_KEY": key}
    assert service_env("qdrant", shell)["QDRANT__SERVICE__API_KEY"] == key
    for service in (*API_SERVICES, "ingest"):
        settings = container_settings(service, shell)
        assert settings.qdrant.api_key is not None
        assert settings.qdrant.api_key.get_secret_value() == key


@pytest.mark.parametrize("placeholder", ["changeme", "secret"])
def test_a_placeholder_qdrant_key_is_still_refused_in_production(placeholder: str) -> None:
    shell = {"RAGTUNE_ADMIN__TOKEN": ADMIN_TOKEN, "QDRANT_API_KEY": placeholder}
    with pytest.raises(ValueError, match=r"qdrant\.api_key is a placeholder"):
        container_settings("api", shell)


@pytest.mark.parametrize("service", API_SERVICES)
def test_compose_needs_an_admin_token(service: str) -> None:
    with pytest.raises(AssertionError, match="RAGTUNE_ADMIN__TOKEN: set an admin token"):
        service_env(service, {})


def test_the_env_example_as_it_is_starts_once_a_token_is_set() -> None:
    """`cp deploy/compose/env.example .env` plus a token: every ragtune container starts."""
    shell = compose_shell()
    assert shell["COMPOSE_PROFILES"] == "gpu"
    api = container_settings("api", shell)
    assert api.llm.use_vllm()
    assert api.api.keys == []
    cpu = container_settings("api-cpu", shell)
    assert not cpu.llm.use_vllm()
    assert container_settings("ingest", shell).qdrant.url == api.qdrant.url == cpu.qdrant.url
    keys = '["user-key-0123456789abcdef"]'
    with_keys = container_settings("api", compose_shell(RAGTUNE_API__KEYS=keys))
    assert [k.get_secret_value() for k in with_keys.api.keys] == ["user-key-0123456789abcdef"]


def test_every_secret_comes_from_the_env_file() -> None:
    """Secrets are compose variables (from .env), never values written in compose.yaml."""
    secret_vars = {"RAGTUNE_ADMIN__TOKEN", "RAGTUNE_QDRANT__API_KEY", "RAGTUNE_API__KEYS",
                   "QDRANT__SERVICE__API_KEY"}  # fmt: skip
    for name, spec in services().items():
        for key, value in spec.get("environment", {}).items():
            if key in secret_vars:
                assert str(value).startswith("${"), f"{name}: {key} is written in compose.yaml"
    documented = set(env_example())
    for variable in {"RAGTUNE_ADMIN__TOKEN", "QDRANT_API_KEY", "RAGTUNE_API__KEYS"}:
        assert variable in documented, f"deploy/compose/env.example does not document {variable}"


# --- names and references ---------------------------------------------------------------------


def test_every_environment_variable_is_one_its_image_reads() -> None:
    known = setting_env_names()
    for name, spec in services().items():
        image = image_name(spec["image"])
        for key in spec.get("environment", {}):
            if image in RAGTUNE_IMAGES:
                assert key in known, f"{name}: ragtune reads no {key} (ragtune.settings)"
            else:
                assert key in FOREIGN_ENV[image], f"{name}: {image} does not read {key}"


def test_profiles_start_what_their_services_depend_on() -> None:
    assert not profiles_of(services()["qdrant"]), "Qdrant runs in every profile"
    assert {"vllm", "api"} <= enabled("gpu")
    assert "api-cpu" not in enabled("gpu")
    assert "api-cpu" in enabled("cpu")
    assert not {"vllm", "api"} & enabled("cpu")
    assert "ingest" in enabled("ingest")
    assert "prometheus" in enabled("metrics")
    for profile in PROFILES:
        for name in enabled(profile):
            for needed, how in services()[name].get("depends_on", {}).items():
                assert needed in enabled(profile), f"{profile}: {name} needs {needed}"
                if how["condition"] == "service_healthy":
                    assert "healthcheck" in services()[needed], f"{needed} has no healthcheck"


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose()["volumes"])
    used = set()
    for name in services():
        for source, _ in mounts(name, compose_shell()).values():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            else:
                assert (REPO / source).resolve().is_relative_to(REPO), f"{name}: {source}"
                # Data (models) is made by `ragtune model prepare`; the rest is in the repo.
                if not source.startswith("./.ragtune/"):
                    assert (REPO / source).exists(), f"{name}: {source} does not exist"
    assert used == declared, f"declared but unused: {declared - used}"


def test_images_are_built_from_the_dockerfile_or_pinned() -> None:
    for name, spec in services().items():
        if image_name(spec["image"]) in RAGTUNE_IMAGES:
            assert spec["build"]["dockerfile"] == "deploy/api/Dockerfile", name
            assert (REPO / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()


def test_vllm_serves_what_the_api_asks_of_it() -> None:
    shell = compose_shell()
    settings = container_settings("api", shell)
    vllm = services()["vllm"]
    args = flags([interpolate(a, shell) for a in vllm["command"]])
    assert "--enable-lora" in args
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert args["--model"] == settings.llm.model
    assert args["--served-model-name"] == settings.llm.served_model_name
    assert int(args["--max-loras"]) == settings.llm.max_loras
    assert int(args["--max-lora-rank"]) == settings.llm.max_lora_rank
    url = urlsplit(settings.llm.vllm_url or "")
    assert url.hostname == "vllm"
    assert url.port == int(args["--port"])
    gpu = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]


def test_vllm_reads_the_model_and_the_adapters_at_the_apis_paths_read_only() -> None:
    shell = compose_shell()
    vllm = mounts("vllm", shell)
    for service in API_SERVICES:
        settings = container_settings(service, shell)
        api = mounts(service, shell)
        root = str(settings.adapters_root())
        assert api[root] == ("adapters", False), f"{service}: the registry at {root}, writable"
        if service == "api":
            assert vllm[root] == ("adapters", True), "vLLM: the registry at the same path, ro"
        model = Path(settings.llm.model or "")
        parent = str(model.parent)
        assert api[parent][1], f"{service}: the model folder read-only"
        if service == "api":
            assert vllm[parent] == api[parent]
        # Captures and feedback: shared by the replicas (each appends whole records).
        for folder in ("captures", "feedback"):
            assert api[str(settings.data_dir / folder)] == (folder, False)


@pytest.mark.parametrize("service", API_SERVICES)
def test_the_api_port_health_and_drain(service: str) -> None:
    settings = container_settings(service, compose_shell())
    spec = services()[service]
    (port,) = spec["ports"]
    published, _, target = str(port).rpartition(":")
    assert int(target) == settings.api.port
    first, _, last = published.partition("-")
    assert int(last) > int(first), "a host port range, so that `--scale api=N` works"
    probe = " ".join(spec["healthcheck"]["test"])
    url = urlsplit(probe[probe.index("http://") :].split("'")[0])
    assert url.port == settings.api.port
    assert url.path in served_paths()
    grace = spec["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > settings.api.shutdown_timeout_s


def test_vllm_healthcheck_is_its_health_endpoint() -> None:
    probe = " ".join(services()["vllm"]["healthcheck"]["test"])
    assert urlsplit(probe[probe.index("http://") :].split("'")[0]).path == VLLM_HEALTH


def test_ingest_fills_the_collection_the_api_serves() -> None:
    from service.routes.loader import load_served_routes

    shell = compose_shell()
    ingest = services()["ingest"]
    command = ingest["command"]
    assert command[:2] == ["ragtune", "ingest"]
    path = command[2]
    assert path in mounts("ingest", shell), f"ingest reads {path}, which is not mounted"
    collection = command[command.index("--collection") + 1]
    routes = load_served_routes(container_settings("api", shell))
    served = {spec.retrieval.collection for spec in routes.values() if spec.retrieval}
    assert collection in served
    assert ingest.get("restart") == "no", "a one-shot service"


def test_prometheus_scrapes_every_api_replica() -> None:
    spec = services()["prometheus"]
    (config_mount,) = [
        v for v in spec["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")
    ]
    config = load_yaml(REPO / config_mount.split(":")[0])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ragtune-api"]
    assert job["metrics_path"] in served_paths()
    (sd,) = job["dns_sd_configs"]
    assert sd["type"] == "A"
    settings = container_settings("api", compose_shell())
    assert sd["port"] == settings.api.port
    names: dict[str, set[str]] = {}  # DNS name -> the services answering to it
    for name, service in services().items():
        aliases = service.get("networks", {}).get("default", {}).get("aliases", [])
        for dns in (name, *aliases):
            names.setdefault(dns, set()).add(name)
    for dns in sd["names"]:
        assert names.get(dns), f"no service answers to {dns}"
        assert names[dns] == set(API_SERVICES), f"{dns} must find the API replicas only"


# --- docker-compose config ----------------------------------------------------------------------


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return [need_tool("docker-compose", "docker-compose", "compose-tool")]


def test_docker_compose_config_accepts_every_profile(tmp_path: Path) -> None:
    command = compose_command()
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in compose_shell().items()), encoding="utf-8")
    # Not the caller's environment: compose would prefer it to the env file.
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    base = [*command, "-f", str(COMPOSE), "--project-directory", str(REPO)]
    # One process per profile, side by side (each takes a second or two to start).
    runs = {
        profile: subprocess.Popen(
            [*base, "--env-file", str(env_file), "--profile", profile, "config", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environ,
        )
        for profile in PROFILES
    }
    for profile, run in runs.items():
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, f"--profile {profile}: {out}"
    # And it refuses the file without an admin token, naming the variable.
    env_file.write_text("QDRANT_API_KEY=\n", encoding="utf-8")
    refused = subprocess.run(
        [*base, "--env-file", str(env_file), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=environ,
        check=False,
    )
    assert refused.returncode != 0
    assert "RAGTUNE_ADMIN__TOKEN" in refused.stdout + refused.stderr
