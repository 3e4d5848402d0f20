"""The embedder's dtype (`embedding.dtype`: auto, float32, bfloat16) and torch threads."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ingest.embedder import (
    Dtype,
    Embedder,
    choose_dtype,
    cpu_flags,
    default_threads,
    detect_dtype,
    torch_threads,
)
from ragtune.settings import EmbeddingSettings, Settings

# Abridged /proc/cpuinfo of three machines: this project's AMD EPYC (avx2 only), an Intel
# Sapphire Rapids (AMX), and an AMD Zen 4 (avx512_bf16, no AMX).
EPYC_AVX2 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
processor\t: 1
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
"""
SAPPHIRE_RAPIDS = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = """\
processor\t: 0
model name\t: AMD EPYC 9654
flags\t\t: avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni
"""
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2 bf16 i8mm\n"

TEXTS = [
    "What causes scurvy?",
    "Vitamin C deficiency leads to scurvy, a disease of the connective tissue.",
    "Mitochondria produce most of the cell's supply of adenosine triphosphate.",
    "0-dimensional biomaterials lack inductive properties.",
]


@pytest.mark.parametrize(
    ("cpuinfo", "capability", "expected"),
    [
        (EPYC_AVX2, "AVX2", "float32"),
        (SAPPHIRE_RAPIDS, "AVX512", "bfloat16"),
        (ZEN4, "AVX512", "bfloat16"),
        # AVX512 alone (Skylake-X, Ice Lake) has no bf16 instructions.
        ("flags\t: avx2 avx512f avx512bw avx512vl\n", "AVX512", "float32"),
        (GRAVITON, "DEFAULT", "float32"),  # Arm bf16 is not measured: float32
        (None, "AVX2", "float32"),  # macOS, Windows: no /proc/cpuinfo
        (None, "AVX512", "float32"),
        ("", "unknown", "float32"),
    ],
)
def test_auto_on_cpu_is_bfloat16_only_with_native_bf16(
    cpuinfo: str | None, capability: str, expected: str
) -> None:
    choice = choose_dtype("auto", "cpu", cpu_capability=capability, cpuinfo=cpuinfo)
    assert choice.dtype == expected
    assert "embedding.dtype=auto" in choice.why
    assert capability in choice.why


def test_the_reason_names_what_was_found() -> None:
    amx = choose_dtype("auto", "cpu", cpu_capability="AVX512", cpuinfo=SAPPHIRE_RAPIDS)
    assert "amx_bf16/avx512_bf16" in amx.why
    avx2 = choose_dtype("auto", "cpu", cpu_capability="AVX2", cpuinfo=EPYC_AVX2)
    assert "no avx512_bf16/amx_bf16" in avx2.why
    mac = choose_dtype("auto", "cpu", cpu_capability="DEFAULT", cpuinfo=None)
    assert "no /proc/cpuinfo" in mac.why


@pytest.mark.parametrize(
    ("device", "cuda_bf16", "expected"),
    [
        ("cuda", True, "bfloat16"),
        ("cuda:1", True, "bfloat16"),
        ("CUDA", True, "bfloat16"),
        ("cuda", False, "float32"),  # pre-Ampere GPUs
        ("mps", True, "float32"),
        ("xpu", False, "float32"),
    ],
)
def test_auto_on_other_devices(device: str, cuda_bf16: bool, expected: str) -> None:
    # The CPU's flags do not matter when the model runs elsewhere.
    choice = choose_dtype(
        "auto", device, cpu_capability="AVX2", cpuinfo=EPYC_AVX2, cuda_bf16=cuda_bf16
    )
    assert choice.dtype == expected


@pytest.mark.parametrize("cpuinfo", [EPYC_AVX2, SAPPHIRE_RAPIDS, None])
@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_an_explicit_dtype_is_kept(cpuinfo: str | None, requested: Dtype) -> None:
    choice = choose_dtype(requested, "cpu", cpu_capability="AVX2", cpuinfo=cpuinfo)
    assert choice.dtype == requested
    assert "set by embedding.dtype" in choice.why


def test_forced_bfloat16_without_native_support_says_it_is_slower() -> None:
    forced = choose_dtype("bfloat16", "cpu", cpu_capability="AVX2", cpuinfo=EPYC_AVX2)
    assert "emulated" in forced.why
    native = choose_dtype("bfloat16", "cpu", cpu_capability="AVX512", cpuinfo=SAPPHIRE_RAPIDS)
    assert "emulated" not in native.why


def test_cpu_flags_reads_every_flags_line() -> None:
    assert {"avx2", "sha_ni", "vaes"} <= cpu_flags(EPYC_AVX2)
    assert "amx_bf16" in cpu_flags(SAPPHIRE_RAPIDS)
    assert "bf16" in cpu_flags(GRAVITON)
    assert cpu_flags("model name\t: flags in a name\n") == set()


def test_dtype_and_threads_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EmbeddingSettings().dtype == "auto"
    assert EmbeddingSettings().threads is None
    with pytest.raises(ValidationError, match="dtype"):
        EmbeddingSettings(dtype="float16")
    with pytest.raises(ValidationError, match="threads"):
        EmbeddingSettings(threads=0)
    monkeypatch.setenv("RAGTUNE_EMBEDDING__DTYPE", "bfloat16")
    monkeypatch.setenv("RAGTUNE_EMBEDDING__THREADS", "1")
    embedding = Settings().embedding
    assert (embedding.dtype, embedding.threads) == ("bfloat16", 1)


def _native_bf16_here() -> bool:
    path = Path("/proc/cpuinfo")
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return bool(cpu_flags(text) & {"avx512_bf16", "amx_bf16"})


def test_auto_resolves_for_this_machine(embedder: Embedder) -> None:
    # This project's machine (AMD EPYC, avx2) has no native bf16: auto is float32 there.
    expected = "bfloat16" if _native_bf16_here() else "float32"
    assert detect_dtype("auto", "cpu").dtype == expected
    assert embedder.dtype == expected
    assert embedder.info()["dtype"] == expected


def test_bfloat16_runs_here_and_agrees_with_float32(
    embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ingest.embedder"):
        bf16 = Embedder.load(EmbeddingSettings(dtype="bfloat16"))
    assert bf16.dtype == "bfloat16"
    assert bf16.info()["dtype"] == "bfloat16"
    [line] = [r.getMessage() for r in caplog.records if r.name == "ingest.embedder"]
    assert "in bfloat16" in line
    assert "torch thread" in line
    assert "set by embedding.dtype" in line

    reference = Embedder.load(EmbeddingSettings(dtype="float32"))
    low, full = bf16.encode(TEXTS), reference.encode(TEXTS)
    assert low.dtype == np.float32
    assert low.shape == full.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(low * full, axis=1)
    assert cosines.min() >= 0.999
    assert not np.array_equal(low, full)  # it really ran in bf16
    assert np.allclose(full, embedder.encode(TEXTS), atol=1e-6)


def test_torch_threads_apply_inside_and_are_put_back() -> None:
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before
    inside: list[int] = []

    def failing_encode() -> None:
        with torch_threads(1):
            inside.append(torch.get_num_threads())
            raise RuntimeError("an encode that fails")

    with pytest.raises(RuntimeError):
        failing_encode()
    assert inside == [1]
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch to run 2+ threads")
def test_a_thread_started_meanwhile_keeps_the_process_count() -> None:
    # The embedded LLM's worker starts on its first request, maybe while a question embeds.
    before = torch.get_num_threads()
    seen: list[int] = []
    with torch_threads(1):
        started = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        started.start()
        started.join()
    assert seen == [before]


def test_threads_default_to_half_the_cores_while_serving(embedder: Embedder) -> None:
    assert 1 <= default_threads() <= max(1, torch.get_num_threads())
    # Ingestion keeps torch's own count; the app's embedder takes half the cores.
    assert embedder.threads is None
    assert Embedder.load(EmbeddingSettings(), serving=True).threads == default_threads()
    assert Embedder.load(EmbeddingSettings(threads=3), serving=True).threads == 3
    assert Embedder.load(EmbeddingSettings(threads=3)).threads == 3


def test_threads_leave_the_vectors_alone(embedder: Embedder) -> None:
    before = torch.get_num_threads()
    default = embedder.encode(TEXTS)
    saved, embedder.threads = embedder.threads, 1
    try:
        assert np.allclose(embedder.encode(TEXTS), default, atol=1e-5)
    finally:
        embedder.threads = saved
    assert torch.get_num_threads() == before
