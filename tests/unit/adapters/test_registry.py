"""The adapter registry: content-addressed versions, aliases and rollback, several processes."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters.audit import AuditLog
from adapters.registry import REGISTRY_FILE, Registry, content_version
from adapters.validate import ModelSpec
from engine.lora import CONFIG_FILE
from ragtune.errors import AdapterError, InvalidInput, NotFound, RagtuneError

if TYPE_CHECKING:
    # Imported for annotations only: the spawned workers below import this module, and
    # tests.conftest pulls in the embedder and Qdrant.
    from multiprocessing.synchronize import Barrier

    from tests.conftest import TinyModel

MB = 1024 * 1024
WRITES_PER_WORKER = 50


@pytest.fixture(scope="module")
def spec(tiny_model: TinyModel) -> ModelSpec:
    return ModelSpec.from_model_dir(tiny_model.path)


@pytest.fixture
def registry(tmp_path: Path, spec: ModelSpec) -> Registry:
    return Registry(tmp_path / "registry", spec, max_rank=16, max_bytes=MB)


@pytest.fixture
def two(registry: Registry, tiny_model: TinyModel) -> tuple[str, str]:
    """The refs of alpha and beta registered as versions of one adapter, "sql"."""
    a = registry.register(tiny_model.adapters["alpha"], "sql", "first")
    b = registry.register(tiny_model.adapters["beta"], "sql", "second")
    return a.ref, b.ref


def test_register_stores_a_content_addressed_version(
    registry: Registry, tiny_model: TinyModel, tmp_path: Path
) -> None:
    source = tiny_model.adapters["alpha"]
    record = registry.register(source, "sql", "JSON answers")
    version, size = content_version(source)
    assert record.version == version
    assert len(version) == 16
    assert record.ref == f"sql@{version}"
    assert (record.rank, record.alpha, record.size_bytes) == (8, 16.0, size)
    assert record.description == "JSON answers"
    assert record.created_at.utcoffset() is not None
    stored = registry.path(record.ref)
    assert stored == registry.root / "store" / "sql" / version
    for f in source.iterdir():
        assert (stored / f.name).read_bytes() == f.read_bytes()
    # The same bytes in another folder are the same version.
    copy = Path(shutil.copytree(source, tmp_path / "elsewhere"))
    assert content_version(copy)[0] == version
    (copy / "README.md").write_text("changed")
    assert content_version(copy)[0] != version


def test_registering_the_same_content_again_returns_the_record(
    registry: Registry, tiny_model: TinyModel
) -> None:
    first = registry.register(tiny_model.adapters["alpha"], "sql")
    revision = registry.revision()
    again = registry.register(tiny_model.adapters["alpha"], "sql", "another description")
    assert again == first
    assert registry.revision() == revision
    assert [r.ref for r in registry.versions()] == [first.ref]
    assert list((registry.root / "tmp").iterdir()) == []
    # The same bytes under another name are another adapter.
    other = registry.register(tiny_model.adapters["alpha"], "copy")
    assert other.version == first.version
    assert other.ref != first.ref


def test_register_replaces_leftovers_and_restores_lost_files(
    registry: Registry, tiny_model: TinyModel
) -> None:
    source = tiny_model.adapters["alpha"]
    version, _ = content_version(source)
    # A process that died after moving files into the store but before recording them.
    leftover = registry.root / "store" / "sql" / version
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half written")
    record = registry.register(source, "sql")
    assert content_version(registry.path(record.ref))[0] == version
    shutil.rmtree(registry.path(record.ref))
    with pytest.raises(NotFound, match="register the adapter again"):
        registry.path(record.ref)
    assert registry.register(source, "sql") == record
    assert content_version(registry.path(record.ref))[0] == version


def test_invalid_adapter_leaves_nothing_behind(registry: Registry, tiny_model: TinyModel) -> None:
    with pytest.raises(AdapterError, match="rank 32"):
        registry.register(tiny_model.adapters["too-big"], "big")
    assert registry.versions() == []
    assert not (registry.root / "store").exists()


def test_versions_get_and_resolve(registry: Registry, two: tuple[str, str]) -> None:
    a, b = two
    assert [r.ref for r in registry.versions("sql")] == [a, b]
    assert registry.versions("other") == []
    assert registry.get(a).description == "first"
    assert registry.resolve(b).ref == b
    registry.set_alias("prod", a)
    assert registry.resolve("prod").ref == a
    with pytest.raises(NotFound, match="no alias 'staging'"):
        registry.resolve("staging")
    with pytest.raises(NotFound, match="no adapter sql@0000000000000000"):
        registry.get("sql@0000000000000000")
    with pytest.raises(InvalidInput, match="not an adapter ref"):
        registry.get("sql")


def test_alias_rollback_and_rollback_again(registry: Registry, two: tuple[str, str]) -> None:
    a, b = two
    first = registry.set_alias("prod", a)
    assert (first.target, first.previous) == (a, None)
    with pytest.raises(InvalidInput, match="nothing to roll back to"):
        registry.rollback("prod")
    moved = registry.set_alias("prod", b)
    assert (moved.target, moved.previous) == (b, a)
    back = registry.rollback("prod")
    assert (back.target, back.previous) == (a, b)
    again = registry.rollback("prod")
    assert (again.target, again.previous) == (b, a)
    assert registry.aliases()["prod"] == again
    with pytest.raises(NotFound, match="no alias 'nope'"):
        registry.rollback("nope")


def test_alias_to_the_same_target_writes_nothing(registry: Registry, two: tuple[str, str]) -> None:
    a, b = two
    registry.set_alias("prod", a)
    registry.set_alias("prod", b)
    revision = registry.revision()
    same = registry.set_alias("prod", b)
    assert (same.target, same.previous) == (b, a)
    assert registry.revision() == revision


def test_alias_can_copy_another_alias(registry: Registry, two: tuple[str, str]) -> None:
    a, _ = two
    registry.set_alias("staging", a)
    assert registry.set_alias("prod", "staging").target == a
    with pytest.raises(NotFound, match="no alias 'missing'"):
        registry.set_alias("prod", "missing")


def test_delete_is_refused_while_an_alias_needs_the_version(
    registry: Registry, two: tuple[str, str]
) -> None:
    a, b = two
    registry.set_alias("prod", a)
    with pytest.raises(InvalidInput, match="still used by alias prod"):
        registry.delete(a)
    registry.set_alias("prod", b)  # a is now the rollback target
    with pytest.raises(InvalidInput, match="still used by alias prod"):
        registry.delete(a)
    folder = registry.path(a)
    registry.remove_alias("prod")
    registry.delete(a)
    assert not folder.exists()
    with pytest.raises(NotFound):
        registry.get(a)
    registry.delete(b)
    assert not (registry.root / "store" / "sql").exists()
    with pytest.raises(NotFound):
        registry.delete(b)


def test_state_persists_across_instances(
    registry: Registry, two: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two
    registry.set_alias("prod", a)
    registry.attach_eval(b, "format", {"valid": 0.97, "n": 100})
    reader = Registry(registry.root, None, max_rank=16, max_bytes=MB)
    state = reader.snapshot()
    # Two registers, one alias, one evaluation.
    assert state.revision == reader.revision() == 4
    assert [r.ref for r in state.records] == [a, b]
    assert state.aliases["prod"].target == a
    assert reader.get(b).evals == {"format": {"valid": 0.97, "n": 100}}
    # A write from the second instance is seen by the first.
    reader.set_alias("prod", b)
    assert registry.resolve("prod").ref == b


def test_attach_eval_refuses_what_is_not_json(registry: Registry, two: tuple[str, str]) -> None:
    with pytest.raises(InvalidInput, match="plain JSON"):
        registry.attach_eval(two[0], "format", {"score": float("nan")})
    with pytest.raises(InvalidInput, match="plain JSON"):
        registry.attach_eval(two[0], "format", {"when": object()})


def test_corrupt_registry_file_is_reported_not_reset(
    registry: Registry, two: tuple[str, str]
) -> None:
    path = registry.root / REGISTRY_FILE
    path.write_text('{"format": 1, "revision": 3, "records": [')
    for read in (registry.snapshot, registry.revision, registry.versions):
        with pytest.raises(RagtuneError, match=r"corrupt.*never reset automatically"):
            read()
    with pytest.raises(RagtuneError, match="corrupt"):
        registry.set_alias("prod", two[0])
    assert path.read_text() == '{"format": 1, "revision": 3, "records": ['
    path.write_text(json.dumps({"format": 99, "revision": 1}))
    with pytest.raises(RagtuneError, match="corrupt"):
        registry.snapshot()


@pytest.mark.parametrize("name", ["a@b", "a/b", "", ".hidden", "-x", "x" * 65, "../x", "a b"])
def test_bad_names_are_refused(registry: Registry, tiny_model: TinyModel, name: str) -> None:
    with pytest.raises(InvalidInput, match="is not allowed"):
        registry.register(tiny_model.adapters["alpha"], name)
    with pytest.raises(InvalidInput, match="is not allowed"):
        registry.set_alias(name, "sql@0123456789abcdef")


def flip_aliases(root: Path, worker: int, refs: list[str], barrier: Barrier) -> None:
    """Each iteration writes twice: this worker's alias moves, and a shared record gets an
    evaluation under a key no other worker uses (a lost update would drop it)."""
    registry = Registry(root, None, max_rank=16, max_bytes=MB)
    barrier.wait()
    for i in range(WRITES_PER_WORKER):
        registry.set_alias(f"w{worker}", refs[i % 2])
        registry.attach_eval(refs[0], f"w{worker}-{i}", {"i": i})


def test_two_processes_writing_at_once_lose_nothing(
    registry: Registry, two: tuple[str, str]
) -> None:
    start = registry.revision()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [
        ctx.Process(target=flip_aliases, args=(registry.root, w, list(two), barrier))
        for w in range(2)
    ]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    state = registry.snapshot()
    assert state.revision == start + 2 * 2 * WRITES_PER_WORKER
    evals = state.records[0].evals
    assert len(evals) == 2 * WRITES_PER_WORKER
    assert {a: (r.target, r.previous) for a, r in state.aliases.items()} == {
        "w0": (two[1], two[0]),
        "w1": (two[1], two[0]),
    }
    assert not list(registry.root.glob(".registry-*"))


def test_audit_log_appends_and_tails(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    assert log.tail(5) == []
    for i in range(300):
        log.append("cli:me", "alias", f"prod{i}", "ok", "a -> b")
    with log.path.open("a") as f:
        f.write('{"torn": ')  # a crash mid-line
    tail = log.tail(3)
    assert [e["target"] for e in tail] == ["prod297", "prod298", "prod299"]
    assert set(tail[0]) == {"time", "actor", "action", "target", "result", "detail"}
    assert tail[0]["time"].endswith("+00:00")
    everything = log.tail(1000)
    assert [e["target"] for e in everything] == [f"prod{i}" for i in range(300)]


def test_audit_tail_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(20):
        log.append("api:token", "register", f"a{i}", "ok", "x" * i)
    # Blocks smaller than a line: every line is split across reads.
    monkeypatch.setattr("adapters.audit.BLOCK_BYTES", 7)
    assert [e["target"] for e in log.tail(5)] == [f"a{i}" for i in range(15, 20)]
    assert [e["detail"] for e in log.tail(50)] == ["x" * i for i in range(20)]


def test_register_refuses_a_config_missing_from_the_copy(
    registry: Registry, tiny_model: TinyModel, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(tiny_model.adapters["alpha"], tmp_path / "broken"))
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(AdapterError, match="is missing"):
        registry.register(folder, "broken")
