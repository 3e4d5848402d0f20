"""deploy/qdrant/values.yaml for Qdrant's official Helm chart: every key is one of the chart's
own (its default values.yaml, as released), and the values make the distributed cluster
ragtune's settings expect: 3 nodes, persistence, a PDB, one node per machine, the API key
from the Secret ragtune reads it from, the same server version as compose.yaml."""

from __future__ import annotations

from typing import Any

from tests.unit.deploy.manifests import (
    COMPOSE_ONLY_KEYS,
    QDRANT_RELEASE,
    QDRANT_VALUES,
    SECRET_NAME,
    compose,
    env_example,
    load_yaml,
    need_chart,
    objects,
    settings_from,
)


def unknown_keys(ours: Any, defaults: Any, where: str = "") -> list[str]:
    """Our keys that the chart's defaults lack. Mappings are compared key by key where the
    default is a non-empty mapping; a default of {} is a free-form Kubernetes object (resources,
    affinity, annotations...) and a list is one opaque value, so what is inside is not keys."""
    if not isinstance(ours, dict):
        return []
    if not isinstance(defaults, dict):
        return [f"{where or '.'}: a mapping where the chart has {defaults!r}"]
    if not defaults:
        return []
    problems = []
    for key, value in ours.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            problems.append(f"{path}: not a key of the chart")
        else:
            problems += unknown_keys(value, defaults[key], path)
    return problems


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(QDRANT_VALUES)
    return loaded


def test_every_key_is_one_of_the_charts() -> None:
    defaults = load_yaml(need_chart() / "values.yaml")
    assert unknown_keys(values(), defaults) == []


def test_the_key_check_catches_keys_the_chart_lacks() -> None:
    defaults = {"replicaCount": 1, "config": {"cluster": {"enabled": False}}, "affinity": {}}
    ours = {
        "replicaCount": 3,
        "apiKey": "only in the chart's comments",
        "config": {"cluster": {"enabled": True, "typo": 1}},
        "affinity": {"podAntiAffinity": {}},
    }
    assert unknown_keys(ours, defaults) == [
        "apiKey: not a key of the chart",
        "config.cluster.typo: not a key of the chart",
    ]


def test_a_distributed_cluster_of_three_that_survives_losing_a_node() -> None:
    spec = values()
    assert spec["replicaCount"] == 3
    assert spec["config"]["cluster"]["enabled"] is True
    assert spec["persistence"]["size"]
    assert spec["resources"]["requests"]
    assert spec["resources"]["limits"]
    assert spec["podDisruptionBudget"] == {"enabled": True, "maxUnavailable": 1}
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    # The chart's selector labels: app.kubernetes.io/name (the chart) and /instance (release).
    labels = {e["key"]: e["values"] for e in term["labelSelector"]["matchExpressions"]}
    assert labels == {
        "app.kubernetes.io/name": ["qdrant"],
        "app.kubernetes.io/instance": [QDRANT_RELEASE],
    }
    # What ragtune asks of it: a replica of every shard on two nodes, shards spread over all.
    settings = settings_from(dict(objects("ConfigMap")["ragtune-settings"]["data"]))
    assert settings.qdrant.replication_factor is not None
    assert 2 <= settings.qdrant.replication_factor < spec["replicaCount"]
    assert (settings.qdrant.shard_number or 1) % spec["replicaCount"] == 0


def test_the_api_key_comes_from_the_secret_ragtune_reads_it_from() -> None:
    (var,) = [v for v in values()["env"] if v["name"] == "QDRANT__SERVICE__API_KEY"]
    ref = var["valueFrom"]["secretKeyRef"]
    assert ref["name"] == SECRET_NAME
    assert ref["key"] in set(env_example()) - COMPOSE_ONLY_KEYS
    # ... the key the API Deployment reads into RAGTUNE_QDRANT__API_KEY.
    (api,) = objects("Deployment")["ragtune-api"]["spec"]["template"]["spec"]["containers"]
    (mine,) = [v for v in api["env"] if v["name"] == "RAGTUNE_QDRANT__API_KEY"]
    assert mine["valueFrom"]["secretKeyRef"] == ref


def test_the_same_qdrant_version_as_the_chart_and_compose() -> None:
    app_version = load_yaml(need_chart() / "Chart.yaml")["appVersion"]
    assert values()["image"]["tag"] == app_version
    assert compose()["services"]["qdrant"]["image"] == f"qdrant/qdrant:{app_version}"
