"""POST /admin/adapters: register a folder under the adapter root. Paths that could leave the
root and adapters the served model could not load are refused with 422 naming the problem,
before anything reaches the store."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.registry import SUMS_FILE
from tests.fixtures.api import admin_headers
from tests.fixtures.tiny_model import ALL_TARGETS, build_lora
from tests.integration.service.admin.conftest import AdminApi, error_message


def refused(admin_api: AdminApi, rel: str, name: str, status: int = 422) -> str:
    """Register `rel` as `name`, expect a refusal, check nothing was stored; the message."""
    before = admin_api.client.get("/admin/adapters", headers=admin_headers()).json()
    response = admin_api.client.post(
        "/admin/adapters", json={"path": rel, "name": name}, headers=admin_headers()
    )
    assert response.status_code == status, response.text
    assert name not in admin_api.store_names()
    assert admin_api.leftovers() == []
    after = admin_api.client.get("/admin/adapters", headers=admin_headers()).json()
    assert after == before
    return error_message(response)


def test_register_returns_the_record(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    name = admin_api.unique("reg")
    response = admin_api.client.post(
        "/admin/adapters",
        json={"path": rel, "name": name, "description": "polite tone"},
        headers=admin_headers(),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["alias"] is None
    record = body["adapter"]
    assert record["name"] == name
    assert re.fullmatch(r"[0-9a-f]{16}", record["version"])
    assert record["rank"] == 8
    assert record["alpha"] == 16.0
    assert record["target_modules"] == sorted(ALL_TARGETS)
    assert record["description"] == "polite tone"
    assert Path(record["base_model"]).name == admin_api.model.path.name
    source = admin_api.root / rel
    assert record["size_bytes"] == sum(p.stat().st_size for p in source.iterdir())
    assert record["evals"] == {}
    # The files are copied into the store, read-only; the source stays where it was.
    stored = admin_api.root / "store" / name / record["version"]
    # Beside the adapter's files, the registry's checksums of them (checked at every load).
    assert sorted(p.name for p in stored.iterdir()) == sorted(
        [SUMS_FILE, *(p.name for p in source.iterdir())]
    )
    for path in stored.iterdir():
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert source.is_dir()
    listing = admin_api.client.get("/admin/adapters", headers=admin_headers()).json()
    assert [r for r in listing["adapters"] if r["name"] == name] == [record]


def test_register_again_is_idempotent(admin_api: AdminApi) -> None:
    rel = admin_api.stage("beta")
    name = admin_api.unique("idem")
    first = admin_api.register(rel, name)
    revision = admin_api.client.get("/admin/adapters", headers=admin_headers()).json()["revision"]
    again = admin_api.register(rel, name)
    # The same bytes from another folder are the same version too.
    elsewhere = admin_api.register(admin_api.stage("beta"), name)
    assert again == first
    assert elsewhere == first
    listing = admin_api.client.get("/admin/adapters", headers=admin_headers()).json()
    assert [r["version"] for r in listing["adapters"] if r["name"] == name] == [first["version"]]
    assert listing["revision"] == revision
    assert len(list((admin_api.root / "store" / name).iterdir())) == 1


def test_other_content_is_another_version(admin_api: AdminApi) -> None:
    name = admin_api.unique("two")
    one = admin_api.register(admin_api.stage("alpha"), name)
    two = admin_api.register(admin_api.stage("beta"), name)
    assert one["version"] != two["version"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../x", "contains '..'"),
        ("incoming/../../x", "contains '..'"),
        ("..", "contains '..'"),
        ("..\\x", "contains '..'"),
        ("/etc", "is absolute"),
        ("/", "is absolute"),
        ("C:\\adapters\\x", "is absolute"),
        ("incoming/\x00x", "NUL"),
    ],
)
def test_paths_that_leave_the_root_are_refused(
    admin_api: AdminApi, path: str, problem: str
) -> None:
    message = refused(admin_api, path, admin_api.unique("escape"))
    assert problem in message


def test_absolute_path_inside_the_root_is_refused_too(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    message = refused(admin_api, str(admin_api.root / rel), admin_api.unique("abs"))
    assert "is absolute; give a path relative to" in message


def test_symlink_out_of_the_root_is_refused(admin_api: AdminApi, tmp_path: Path) -> None:
    # A perfectly good adapter, but outside the root: only reachable through the link.
    (admin_api.root / "incoming" / "outside-link").symlink_to(admin_api.model.adapters["alpha"])
    message = refused(admin_api, "incoming/outside-link", admin_api.unique("link"))
    assert "leads outside" in message
    assert "symbolic link" in message


def test_symlink_inside_an_adapter_folder_is_refused(admin_api: AdminApi, tmp_path: Path) -> None:
    rel = admin_api.stage("alpha")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    (admin_api.root / rel / "notes.txt").symlink_to(secret)
    message = refused(admin_api, rel, admin_api.unique("inner-link"))
    assert "notes.txt" in message
    assert "symbolic link" in message


def test_a_file_is_not_a_folder(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    message = refused(admin_api, f"{rel}/adapter_config.json", admin_api.unique("file"))
    assert "is not a folder under the adapter root" in message


def test_a_missing_folder_is_refused(admin_api: AdminApi) -> None:
    message = refused(admin_api, "incoming/never-made", admin_api.unique("missing"))
    assert "'incoming/never-made'" in message


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"path": "incoming/x"}, "name: Field required"),
        ({"path": "", "name": "x"}, "path: String should have at least 1 character"),
        ({"path": "incoming/x", "name": "x", "force": True}, "force: unknown field"),
    ],
)
def test_malformed_bodies_are_refused(
    admin_api: AdminApi, body: dict[str, object], problem: str
) -> None:
    response = admin_api.client.post("/admin/adapters", json=body, headers=admin_headers())
    assert response.status_code == 422, response.text
    assert problem in error_message(response)


def test_bad_names_are_refused(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    for name in ("../up", "has space", "a@b", ""):
        message = refused(admin_api, rel, name)
        assert "is not allowed" in message


def test_bad_alias_is_refused_before_anything_is_stored(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    name = admin_api.unique("badalias")
    response = admin_api.client.post(
        "/admin/adapters",
        json={"path": rel, "name": name, "alias": "no such/alias"},
        headers=admin_headers(),
    )
    assert response.status_code == 422, response.text
    assert "alias 'no such/alias' is not allowed" in error_message(response)
    assert name not in admin_api.store_names()


# -- validation against the served model --------------------------------------------------


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def other_shape_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter on a model with other dimensions, whose folder is also named `base`, so
    only the tensor shapes can tell."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    home = tmp_path_factory.mktemp("other")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(home / "base")
    return build_lora(home / "base", home / "adapter", rank=8, seed=4)


def test_adapter_for_another_base_model_by_name(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    edit_config(admin_api.root / rel, base_model_name_or_path="Qwen/Qwen2.5-7B-Instruct")
    message = refused(admin_api, rel, admin_api.unique("wrong-base"))
    assert "was trained on Qwen/Qwen2.5-7B-Instruct, but the served base model is base" in message


def test_adapter_for_another_base_model_by_shape(
    admin_api: AdminApi, other_shape_adapter: Path
) -> None:
    rel = admin_api.stage(other_shape_adapter)
    message = refused(admin_api, rel, admin_api.unique("wrong-shape"))
    assert "it was trained on another base model" in message
    assert "base needs [8, 256] and [128, 8]" in message


def test_rank_above_the_limit(admin_api: AdminApi) -> None:
    assert admin_api.settings.llm.max_lora_rank == 16
    rel = admin_api.stage("too-big")
    message = refused(admin_api, rel, admin_api.unique("too-big"))
    assert "has rank 32, above max_lora_rank 16" in message


def test_unknown_target_module(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    edit_config(admin_api.root / rel, target_modules=["q_proj", "fancy_proj"])
    message = refused(admin_api, rel, admin_api.unique("fancy"))
    assert "targets 'fancy_proj', which base does not have" in message


def _truncate(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50_000])


def _garbage_header(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes((40).to_bytes(8, "little") + b"{" * 40 + b"\0" * 100)


def _huge_header(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (_truncate, "lies past the end of the file (truncated?)"),
        (_garbage_header, "its header is not JSON"),
        (_huge_header, "its header claims"),
    ],
)
def test_corrupt_safetensors(
    admin_api: AdminApi, corrupt: Callable[[Path], None], problem: str
) -> None:
    rel = admin_api.stage("alpha")
    corrupt(admin_api.root / rel)
    message = refused(admin_api, rel, admin_api.unique("corrupt"))
    assert "adapter_model.safetensors of adapter" in message
    assert "is corrupt" in message
    assert problem in message


def test_missing_weights(admin_api: AdminApi) -> None:
    rel = admin_api.stage("alpha")
    (admin_api.root / rel / "adapter_model.safetensors").unlink()
    message = refused(admin_api, rel, admin_api.unique("no-weights"))
    assert "has no adapter_model.safetensors" in message


@pytest.mark.parametrize("pickle_name", ["adapter_model.bin", "training_args.pt"])
def test_pickled_weights_are_refused(admin_api: AdminApi, pickle_name: str) -> None:
    rel = admin_api.stage("alpha")
    # Content does not matter: a pickle is refused by name, never opened.
    (admin_api.root / rel / pickle_name).write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    message = refused(admin_api, rel, admin_api.unique("pickle"))
    assert f"contains {pickle_name}, a pickle file" in message
    assert "safetensors" in message


def test_validation_errors_are_openai_shaped(admin_api: AdminApi) -> None:
    rel = admin_api.stage("too-big")
    response = admin_api.client.post(
        "/admin/adapters", json={"path": rel, "name": "shape"}, headers=admin_headers()
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["code"] == "AdapterError"
