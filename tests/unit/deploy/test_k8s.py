"""deploy/k8s/: every manifest validates against the Kubernetes schemas (kubernetes-validate,
strict, a pinned Kubernetes version), every reference resolves (ConfigMaps and their keys,
Secret keys, volumes, claims, selectors, ports, probe paths the API serves), the settings the
pods get are ones ragtune reads and accepts, the routes load with ragtune's own loader, every
vLLM pod is registered as a backend, and a shutdown drains within the grace period."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from ragtune.settings import Settings
from service.routes.loader import check_against_settings, load_routes
from tests.unit.deploy.manifests import (
    COMPOSE_ONLY_KEYS,
    FOREIGN_ENV,
    K8S,
    QDRANT_RELEASE,
    SECRET_NAME,
    VLLM_HEALTH,
    container_env,
    env_example,
    image_name,
    k8s_objects,
    kustomization,
    objects,
    pod_labels,
    pod_specs,
    runs_ragtune,
    selects,
    served_paths,
    setting_env_names,
    settings_from,
)

# The Kubernetes release the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.33.0"
NAMESPACE = "ragtune"
# Stand-ins for the Secret's values (the Secret itself is created out of band).
SECRETS = {
    "RAGTUNE_ADMIN__TOKEN": "a-real-admin-token-0123456789",
    "QDRANT_API_KEY": "a-real-qdrant-key-0123456789",
    "RAGTUNE_API__KEYS": '["a-real-user-key-0123456789"]',
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every container of every workload."""
    return [
        (workload, spec, container)
        for workload, spec in pod_specs().items()
        for container in spec.get("initContainers", []) + spec["containers"]
    ]


def ragtune_settings(workload: str) -> Settings:
    (container,) = pod_specs()[workload]["containers"]
    return settings_from(container_env(container, SECRETS))


def mount(
    spec: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volumeMount at `path` and the pod volume it mounts."""
    (found,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return found, volumes[found["name"]]


# --- files and schemas ------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert kustomization()["namespace"] == NAMESPACE
    assert set(objects("Namespace")) == {NAMESPACE}


@pytest.mark.parametrize(
    "manifest", k8s_objects(), ids=lambda m: f"{m[1]['kind']}/{m[1]['metadata']['name']}"
)
def test_manifest_validates_against_the_kubernetes_schema(
    manifest: tuple[Path, dict[str, Any]],
) -> None:
    path, body = manifest
    try:
        kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(
            f"{path.name}: {body['kind']} {body['metadata']['name']}: {where}: {exc.message}"
        )
    if body["kind"] != "Namespace":
        assert body["metadata"].get("namespace") == NAMESPACE, f"{path.name}: not in {NAMESPACE}"


# --- references ---------------------------------------------------------------------------------


def test_configmaps_claims_and_volumes_referenced_exist() -> None:
    configmaps, claims = objects("ConfigMap"), objects("PersistentVolumeClaim")
    for workload, spec in pod_specs().items():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                data = configmaps[volume["configMap"]["name"]]["data"]
                for item in volume["configMap"].get("items", []):
                    assert item["key"] in data, f"{workload}: no key {item['key']}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, workload
        used = set()
        for container in spec["containers"]:
            for m in container.get("volumeMounts", []):
                assert m["name"] in volumes, f"{workload}: no volume {m['name']}"
                used.add(m["name"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, workload
        assert used == set(volumes), f"{workload}: volumes not mounted: {set(volumes) - used}"


def test_secret_keys_referenced_are_documented_in_the_env_example() -> None:
    documented = set(env_example()) - COMPOSE_ONLY_KEYS
    assert documented == set(SECRETS), "SECRETS here and env.example list the same keys"
    refs = [
        var["valueFrom"]["secretKeyRef"]
        for _, _, container in containers()
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    ]
    assert refs
    for ref in refs:
        assert ref["name"] == SECRET_NAME, ref
        assert ref["key"] in documented, ref
    assert not objects("Secret"), "no Secret in the repository: it is created out of band"


def test_services_pdbs_policies_and_the_hpa_find_their_pods() -> None:
    labels = pod_labels()
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for name, obj in objects(kind).items():
            selector = obj["spec"].get("selector") or obj["spec"]["podSelector"]
            selector = selector.get("matchLabels", selector)
            assert any(selects(selector, pod) for pod in labels.values()), f"{kind}/{name}"
    for name, service in objects("Service").items():
        pods = [w for w, pod in labels.items() if selects(service["spec"]["selector"], pod)]
        for port in service["spec"]["ports"]:
            for workload in pods:
                names = {
                    p.get("name") for c in pod_specs()[workload]["containers"] for p in c["ports"]
                }
                assert port["targetPort"] in names, f"Service/{name}: {port['targetPort']}"
    for name, hpa in objects("HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in objects(target["kind"]), f"HPA/{name}"
        # More replicas than the PDB keeps: a node drain can always proceed.
        pdb = objects("PodDisruptionBudget")[target["name"]]
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], f"HPA/{name}"


def test_probes_hit_ports_and_paths_that_exist() -> None:
    for workload, _, container in containers():
        if workload.startswith("Job/"):
            continue  # a Job's pod is not served: nothing to probe
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert probe in container, f"{workload}: no {probe}"
            get = container[probe]["httpGet"]
            assert get["port"] in ports, f"{workload}: {probe} on port {get['port']}"
            if runs_ragtune(container):
                assert get["path"] in served_paths(), f"{workload}: {probe} {get['path']}"
            else:
                assert get["path"] == VLLM_HEALTH


@pytest.mark.parametrize("workload", ["Deployment/ragtune-api"])
def test_api_probes_are_readiness_on_readyz_and_liveness_on_healthz(workload: str) -> None:
    (container,) = pod_specs()[workload]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    settings = ragtune_settings(workload)
    assert container["ports"][0]["containerPort"] == settings.api.port


# --- settings and routes ------------------------------------------------------------------------


def test_every_environment_variable_is_one_its_image_reads() -> None:
    known = setting_env_names()
    for workload, _, container in containers():
        env = container_env(container, SECRETS)
        if runs_ragtune(container):
            unknown = {k for k in env if k.startswith("RAGTUNE_")} - known
            assert not unknown, f"{workload}: ragtune reads no {unknown}"
        else:
            assert set(env) <= FOREIGN_ENV[image_name(container["image"])], workload
    for key in objects("ConfigMap")["ragtune-settings"]["data"]:
        assert key in known, f"ragtune-settings: ragtune reads no {key}"


@pytest.mark.parametrize("workload", ["Deployment/ragtune-api", "Job/ragtune-ingest"])
def test_ragtune_pods_build_their_settings_in_production(workload: str) -> None:
    settings = ragtune_settings(workload)
    assert settings.environment == "production"
    assert settings.qdrant.api_key is not None
    url = urlsplit(settings.qdrant.url or "")
    assert (url.hostname, url.port) == (QDRANT_RELEASE, 6333), "the Helm release's Service"
    assert settings.qdrant.replication_factor == 2
    assert (settings.qdrant.shard_number or 1) >= 3


def test_the_api_without_optional_secret_keys_is_open_and_still_starts() -> None:
    (container,) = pod_specs()["Deployment/ragtune-api"]["containers"]
    secrets = {k: v for k, v in SECRETS.items() if k != "RAGTUNE_API__KEYS"}
    assert settings_from(container_env(container, secrets)).api.keys == []


def test_the_routes_configmap_loads_with_ragtunes_loader(tmp_path: Path) -> None:
    workload = "Deployment/ragtune-api"
    spec = pod_specs()[workload]
    (container,) = spec["containers"]
    settings = ragtune_settings(workload)
    routes_file = settings.api.routes_file
    assert routes_file is not None
    found, volume = mount(spec, container, str(routes_file.parent))
    assert found.get("readOnly")
    (item,) = [i for i in volume["configMap"]["items"] if i["path"] == routes_file.name]
    text = objects("ConfigMap")[volume["configMap"]["name"]]["data"][item["key"]]
    path = tmp_path / routes_file.name
    path.write_text(text, encoding="utf-8")
    routes = load_routes(path)
    check_against_settings(routes, settings, path)
    # Every collection a route retrieves from is one the ingest Job fills.
    (job,) = pod_specs()["Job/ragtune-ingest"]["containers"]
    filled = job["args"][job["args"].index("--collection") + 1]
    collections = {r.retrieval.collection for r in routes.values() if r.retrieval}
    assert collections == {filled}


def test_a_shutdown_drains_streams_within_the_grace_period() -> None:
    spec = pod_specs()["Deployment/ragtune-api"]
    (container,) = spec["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = ragtune_settings("Deployment/ragtune-api").api.shutdown_timeout_s
    assert spec["terminationGracePeriodSeconds"] > int(sleep[1]) + drain
    strategy = objects("Deployment")["ragtune-api"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


# --- vLLM: one backend per pod, the adapters at the API's path -----------------------------------


def test_every_vllm_pod_is_registered_as_a_backend() -> None:
    settings = ragtune_settings("Deployment/ragtune-api")
    ((name, statefulset),) = objects("StatefulSet").items()
    service = objects("Service")[statefulset["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "headless: a DNS name per pod"
    assert selects(
        service["spec"]["selector"], statefulset["spec"]["template"]["metadata"]["labels"]
    )
    (port,) = service["spec"]["ports"]
    expected = [
        f"http://{name}-{i}.{service['metadata']['name']}:{port['port']}"
        for i in range(statefulset["spec"]["replicas"])
    ]
    assert settings.llm.vllm_urls() == expected
    assert statefulset["spec"]["replicas"] >= 2


def test_vllm_serves_what_the_api_asks_of_it() -> None:
    settings = ragtune_settings("Deployment/ragtune-api")
    (vllm,) = pod_specs()["StatefulSet/vllm"]["containers"]
    args = dict(a.partition("=")[::2] for a in vllm["args"])
    assert "--enable-lora" in args
    env = {v["name"]: v["value"] for v in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert args["--model"] == settings.llm.model
    assert args["--served-model-name"] == settings.llm.served_model_name
    assert int(args["--max-loras"]) == settings.llm.max_loras
    assert int(args["--max-lora-rank"]) == settings.llm.max_lora_rank
    assert int(args["--port"]) == vllm["ports"][0]["containerPort"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_vllm_reads_the_adapters_and_model_at_the_apis_paths_read_only() -> None:
    settings = ragtune_settings("Deployment/ragtune-api")
    api_spec, vllm_spec = pod_specs()["Deployment/ragtune-api"], pod_specs()["StatefulSet/vllm"]
    (api,), (vllm,) = api_spec["containers"], vllm_spec["containers"]
    claims = objects("PersistentVolumeClaim")
    # The API: the data volume at data_dir, writable; the registry is <data_dir>/adapters.
    data_mount, data_volume = mount(api_spec, api, str(settings.data_dir))
    assert not data_mount.get("readOnly")
    claim = data_volume["persistentVolumeClaim"]["claimName"]
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
    root = settings.adapters_root()
    # vLLM: the same claim, the registry's folder at the same path, read-only.
    adapters_mount, adapters_volume = mount(vllm_spec, vllm, str(root))
    assert adapters_volume["persistentVolumeClaim"]["claimName"] == claim
    assert adapters_mount["readOnly"]
    assert adapters_volume["persistentVolumeClaim"]["readOnly"]
    assert settings.data_dir / adapters_mount["subPath"] == root
    # The base model: one claim, one path, read-only in both.
    model = Path(settings.llm.model or "")
    for spec, container in ((api_spec, api), (vllm_spec, vllm)):
        model_mount, model_volume = mount(spec, container, str(model.parent))
        assert model_mount["readOnly"]
        assert model_volume["persistentVolumeClaim"]["readOnly"]
        assert model_volume["persistentVolumeClaim"]["claimName"] == "ragtune-models"


# --- the pods' security ---------------------------------------------------------------------------


def test_every_pod_runs_non_root_on_a_read_only_root() -> None:
    for workload, spec, container in containers():
        assert spec["automountServiceAccountToken"] is False, workload
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", workload
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, workload
        assert context["allowPrivilegeEscalation"] is False, workload
        assert context["capabilities"]["drop"] == ["ALL"], workload
        assert "limits" in container["resources"]
        assert "requests" in container["resources"]
        _tmp, volume = mount(spec, container, "/tmp")
        assert "emptyDir" in volume, f"{workload}: /tmp on an emptyDir (the root is read-only)"
        assert ":" in container["image"]
        assert not container["image"].endswith(":latest")
