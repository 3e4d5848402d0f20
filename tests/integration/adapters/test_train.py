"""Train a real LoRA adapter on the tiny model, then serve it with the embedded engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adapters.eval_format import evaluate_format
from adapters.train import REPORT_FILE, TrainOptions, TrainReport, train_lora
from cli.main import main
from engine.embedded import EmbeddedBackend
from engine.lora import read_lora_config
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from ragtune.errors import AdapterError, InvalidInput
from ragtune.settings import LLMSettings
from tests.conftest import TinyModel

SYSTEM = "Answer in JSON."


def chat(user: str, answer: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    }


def answer_for(i: int) -> str:
    return '{"sentiment":"positive"}' if i % 2 else '{"sentiment":"negative"}'


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    # The label is in the text, so the adapter can learn more than one constant answer.
    lines = [
        json.dumps(chat(f"review {i}: {'good' if i % 2 else 'bad'}", answer_for(i)))
        for i in range(20)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(
    tiny_model: TinyModel, data: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainReport:
    out = tmp_path_factory.mktemp("adapters") / "sentiment"
    options = TrainOptions(rank=8, alpha=16, lr=5e-3, max_steps=30, batch_size=4, seed=0)
    return train_lora(str(tiny_model.path), data, out, options)


def test_loss_goes_down_and_report_is_written(trained: TrainReport, data: Path) -> None:
    assert trained.steps == 30 == len(trained.losses)
    assert trained.examples == 20
    assert trained.final_loss < trained.initial_loss / 2
    saved = json.loads((trained.out / REPORT_FILE).read_text())
    assert saved["steps"] == 30
    assert saved["examples"] == 20
    assert saved["final_loss"] == pytest.approx(trained.final_loss)
    assert saved["options"]["rank"] == 8
    assert saved["options"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert len(saved["data_sha256"]) == 64
    assert saved["seconds"] > 0


def test_adapter_is_servable_and_targets_attention_only(trained: TrainReport) -> None:
    assert (trained.out / "adapter_model.safetensors").is_file()
    info = read_lora_config(trained.out)
    assert info.rank == 8
    assert sorted(info.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert not info.raw.get("modules_to_save")


def test_trained_adapter_changes_greedy_output(tiny_model: TinyModel, trained: TrainReport) -> None:
    async def answers() -> tuple[str, str]:
        engine = EmbeddedBackend.load(str(tiny_model.path), LLMSettings())
        try:
            await engine.load_adapter("sentiment", trained.out)
            messages = [
                ChatMessage(role="system", content=SYSTEM),
                ChatMessage(role="user", content="review 3: good"),
            ]
            sampling = SamplingParams(max_tokens=12)
            base = await engine.generate(GenerationRequest(messages=messages, sampling=sampling))
            tuned = await engine.generate(
                GenerationRequest(messages=messages, adapter="sentiment", sampling=sampling)
            )
            return base.text, tuned.text
        finally:
            await engine.aclose()

    base, tuned = asyncio.run(answers())
    assert tuned != base
    assert tuned == answer_for(3)


def test_eval_format_scores_base_few_shot_and_adapter(
    tiny_model: TinyModel, trained: TrainReport, data: Path
) -> None:
    scores = evaluate_format(
        str(tiny_model.path), data, LLMSettings(), adapter=trained.out, few_shot=2
    )
    assert [s.name for s in scores] == ["base", "base 2-shot", "adapter"]
    assert all(s.records == 18 for s in scores)  # the two shots are not scored
    adapter = scores[-1]
    assert adapter.valid == 1.0
    assert adapter.accuracy > scores[0].accuracy


def test_rank_12_is_refused(tiny_model: TinyModel, data: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="rank 12"):
        train_lora(str(tiny_model.path), data, tmp_path / "a", TrainOptions(rank=12))
    assert not (tmp_path / "a").exists()


def test_cli_trains_and_refuses_with_one_line(
    tiny_model: TinyModel, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["adapters", "train", "--base", str(tiny_model.path), "--data", str(data)]
    assert main([*base, "--out", str(tmp_path / "r12"), "--rank", "12"]) == 2
    assert "rank 12 cannot be served by vLLM" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main([*base, "--out", str(out), "--max-steps", "2", "--no-progress"]) == 0
    assert "trained 2 steps on 20 examples" in capsys.readouterr().out
    assert (out / "adapter_config.json").is_file()
    # A second run never overwrites a trained adapter.
    with pytest.raises(InvalidInput, match="not empty"):
        train_lora(str(tiny_model.path), data, out, TrainOptions(max_steps=1))


def test_cli_makes_the_reviews_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"text": f"{source} review {i}", "label": i % 2, "source": source}
        for source in ("yelp", "amazon")
        for i in range(20)
    ]
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    args = ["adapters", "make-dataset", "reviews", "--input", str(reviews)]
    args += ["--out", str(train), "--eval-out", str(held), "--n-train", "16", "--n-eval", "8"]
    assert main(args) == 0
    assert "16 training records" in capsys.readouterr().out
    train_lines = train.read_text().splitlines()
    eval_lines = held.read_text().splitlines()
    assert len(train_lines) == 16
    assert len(eval_lines) == 8
    assert not set(train_lines) & set(eval_lines)


def test_eval_scores_are_attached_to_the_registered_version(
    tiny_model: TinyModel,
    trained: TrainReport,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    register = ["adapters", "register", str(trained.out), "--name", "tone", "--alias", "tone"]
    assert main(register) == 0
    capsys.readouterr()
    assert (
        main(["adapters", "eval-format", "--adapter", "tone", "--data", str(data), "--attach"]) == 0
    )
    header, base_row, adapter_row, attached = capsys.readouterr().out.splitlines()
    assert header.split() == ["MODEL", "N", "JSON-VALID", "EXACT", "ACCURACY", "TOK/S"]
    assert base_row.split()[0] == "base"
    assert adapter_row.split()[:3] == ["adapter", "20", "100%"]
    assert attached.startswith("scores attached to tone@")
    assert main(["adapters", "list", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    evals = record["evals"]["format:train"]
    assert [s["name"] for s in evals["scores"]] == ["base", "adapter"]
    assert evals["scores"][1]["valid"] == 1.0
    # Without a registered version there is nothing to attach to.
    folder = ["adapters", "eval-format", "--adapter", str(trained.out), "--data", str(data)]
    assert main([*folder, "--attach"]) == 2
