"""Serving fixtures: two tiny LoRA adapters trained once per session on the tiny model
(tests/fixtures/tiny_model.py), each teaching a different answer to the same question."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving.helpers import QUESTION, train_adapter


@dataclass(frozen=True)
class TrainedAdapter:
    name: str
    path: Path  # PEFT folder: adapter_config.json + adapter_model.safetensors
    answer: str


ANSWERS = {"a": "I am Zorbia the blue cat.", "b": "My name is Blorp, a green fish."}


@pytest.fixture(scope="session")
def trained_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainedAdapter]:
    """{"a": ..., "b": ...}; greedy decoding of QUESTION reproduces each answer (checked here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.tiny_model import greedy_answer

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for name, answer in ANSWERS.items():
        path = train_adapter(tiny_model_dir, root / name, answer)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path)
        assert greedy_answer(model, tokenizer, QUESTION) == answer
        out[name] = TrainedAdapter(name, path, answer)
    return out
