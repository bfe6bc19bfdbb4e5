"""A tool-calling fine-tune, for real: the whole trainer (`execute`, TRL SFT + LoRA on CPU) on OpenAI-format
records with tools, tool_calls, tool answers and a weight-0 turn (tests/fixtures/tiny_data.tool_records), and on
the same conversations in LLaMA-Factory's sharegpt tool shape (tests/trainer/lf_data.glaive_toolcall: its
glaive_toolcall_en_demo.json shape, read with that dataset's dataset_info.json columns), on the tiny model with a
tools-aware chat template (tests/fixtures/tiny_model.tiny_tool_model_dir).

What a user gets: the published adapter, prompted through the same template with the tools, writes the
learned call (valid JSON, the right arguments) and, given the tool's answer, the learned reply; the turn
weighted 0 (OpenAI records) was context only, so the adapter never learned to say it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from kubetune.api import exit_codes
from kubetune_trainer import openai_chat
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import (
    UNLEARNED,
    WEATHER,
    WEATHER_TOOL,
    tool_records,
    weather_answer,
    weather_question,
)
from tests.trainer import lf_data
from tests.trainer.helpers import make_config, manifest_problems, train_losses

TOOLS = [openai_chat.served_form(WEATHER_TOOL["function"])]  # as a vLLM request hands them to the template

pytestmark = pytest.mark.slow


def complete(model, tokenizer, messages: list[dict], tools: list | None, max_new_tokens: int = 96) -> str:
    """Greedy continuation of a conversation rendered by the tokenizer's template, up to its end of turn."""
    model.eval()
    prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def parse_call(text: str) -> dict:
    """The Hermes-style call the template renders (what vLLM's hermes parser reads): <tool_call>{json}</tool_call>."""
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    return json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))


# shape -> (file, its content, spec.dataset besides train, the format the trainer reports)
SHAPES = {
    "openai": ("train.jsonl", lambda: lf_data.jsonl(tool_records(48)), {}, "chatml"),
    "llamafactory-sharegpt": ("glaive_toolcall_en_demo.json", lambda: lf_data.json_array(lf_data.glaive_toolcall(48)),
                              {"format": "sharegpt", "columns": {"messages": "conversations", "tools": "tools"}},
                              "sharegpt"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_tool_calling_fine_tune_learns_calls_and_answers_not_weight_zero_turns(tmp_path, tiny_tool_model_dir, shape):
    filename, content, dataset, fmt = SHAPES[shape]
    train = tmp_path / "data" / filename
    train.parent.mkdir()
    train.write_text(content())
    config = make_config(tmp_path / "config.json", job="tools", model=f"file://{tiny_tool_model_dir}",
                         train=f"file://{train}", output=f"file://{tmp_path}/out", spec={"dataset": dataset},
                         hyperparameters={"maxLength": 320, "batchSize": 4, "maxSteps": 20, "learningRate": "5e-3"})
    assert execute(config, work_dir=tmp_path / "work") == exit_codes.SUCCESS, \
        Path(os.environ["KUBETUNE_TERMINATION_LOG"]).read_text()
    report = json.loads(Path(os.environ["KUBETUNE_TERMINATION_LOG"]).read_text())
    root = tmp_path / "out/team-a/tools"
    assert manifest_problems(root) == []
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    assert (effective["format"], effective["assistantOnlyLoss"]) == (fmt, True)
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    losses = train_losses(root)
    print(f"tool SFT ({shape}): loss {losses[0]:.3f} -> {losses[-1]:.4f}, eval {baseline['evalLoss']} -> {final['evalLoss']}")
    assert final["evalLoss"] < 0.1 < baseline["evalLoss"], report

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_tool_model_dir, dtype=torch.float32),
                                      str(root / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(root / "adapter")
    for city in WEATHER:
        history = [{"role": "user", "content": UNLEARNED[0]}, {"role": "assistant", "content": UNLEARNED[1]},
                   {"role": "user", "content": weather_question(city)}]
        call = parse_call(complete(model, tokenizer, history, TOOLS))
        assert call == {"name": "get_weather", "arguments": {"city": city}}
        history += [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
                    {"role": "tool", "name": "get_weather", "content": WEATHER[city]}]
        assert complete(model, tokenizer, history, TOOLS) == weather_answer(city)
    if shape == "openai":  # the weight-0 turn was in every example's context, never in its loss
        assert complete(model, tokenizer, [{"role": "user", "content": UNLEARNED[0]}], TOOLS) != UNLEARNED[1]
