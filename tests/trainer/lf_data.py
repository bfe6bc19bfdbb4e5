"""Datasets in LLaMA-Factory's published shapes (its data/README.md: alpaca, sharegpt, preference, KTO,
pre-training, and dataset_info.json columns/tags), written by us over the tiny model's FACTS.

Each case: the files a LLaMA-Factory user already has, the spec.dataset fields a dataset_info.json entry maps
to, and the method it trains with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.tiny_data import FACTS, UNLEARNED, WEATHER, WEATHER_TOOL, WRONG, weather_answer, weather_question

SYSTEM = "You answer in one sentence."


def _facts(n: int) -> list[tuple[int, str, str]]:
    return [(i, *FACTS[i % len(FACTS)]) for i in range(n)]


def alpaca_sft(n: int = 64) -> list[dict[str, Any]]:
    """instruction/input/output with system and history (LLaMA-Factory's alpaca SFT example)."""
    out = []
    for i, q, a in _facts(n):
        previous_q, previous_a = FACTS[(i + 1) % len(FACTS)]
        out.append({"instruction": q, "input": "", "output": a, "system": SYSTEM,
                    "history": [[previous_q, previous_a]] if i % 2 else []})
    return out


def sharegpt_sft(n: int = 64) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], "system": SYSTEM}
            for _, q, a in _facts(n)]


def openai_via_tags(n: int = 64) -> list[dict[str, Any]]:
    """LLaMA-Factory's "OpenAI format": sharegpt formatting with role/content tags, under another column."""
    return [{"dialog": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                        {"role": "assistant", "content": a}]} for _, q, a in _facts(n)]


def renamed_alpaca(n: int = 64) -> list[dict[str, Any]]:
    return [{"question": q, "context": "", "answer": a} for _, q, a in _facts(n)]


def alpaca_preference(n: int = 64) -> list[dict[str, Any]]:
    return [{"instruction": q, "input": "", "chosen": a, "rejected": WRONG[q]} for _, q, a in _facts(n)]


def sharegpt_preference(n: int = 64) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": a},
             "rejected": {"from": "gpt", "value": WRONG[q]}} for _, q, a in _facts(n)]


def sharegpt_kto(n: int = 64) -> list[dict[str, Any]]:
    return [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a if i % 2 == 0 else WRONG[q]}],
             "kto_tag": i % 2 == 0} for i, q, a in ((i, *FACTS[(i // 2) % len(FACTS)]) for i in range(n))]


def alpaca_kto(n: int = 64) -> list[dict[str, Any]]:
    return [{"instruction": q, "input": "", "output": a if i % 2 == 0 else WRONG[q], "kto_tag": i % 2 == 0}
            for i, q, a in ((i, *FACTS[(i // 2) % len(FACTS)]) for i in range(n))]


def pretraining_lines(n: int = 64) -> str:
    """A .txt pre-training file: one document per line (and a blank line, skipped)."""
    lines = [f"{q} {a}" for _, q, a in _facts(n)]
    return "\n".join(lines[:3] + [""] + lines[3:]) + "\n"


def glaive_toolcall(n: int = 64) -> list[dict[str, Any]]:
    """The shape of LLaMA-Factory's data/glaive_toolcall_en_demo.json (sharegpt with tool turns; dataset_info.json
    columns messages=conversations, tools=tools), over tiny_data's weather tool: a human/gpt exchange, the weather
    question, a `function_call` turn (JSON {"name", "arguments"} as text), the tool's `observation`, and the gpt
    answer; `tools` is a JSON string of bare function definitions. The same conversations as
    tiny_data.tool_records, minus what LLaMA-Factory cannot say (call ids, weights: its gpt turns are all learned)."""
    tools = json.dumps([WEATHER_TOOL["function"]])
    out = []
    for i in range(n):
        city = list(WEATHER)[i % len(WEATHER)]
        out.append({"conversations": [
            {"from": "human", "value": UNLEARNED[0]}, {"from": "gpt", "value": UNLEARNED[1]},
            {"from": "human", "value": weather_question(city)},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": city}})},
            {"from": "observation", "value": WEATHER[city]},
            {"from": "gpt", "value": weather_answer(city)}], "tools": tools})
    return out


@dataclass
class Case:
    name: str
    filename: str
    content: str
    method: dict[str, Any]
    dataset: dict[str, Any] = field(default_factory=dict)  # spec.dataset besides train
    learns: str = "answers"  # answers (greedy answer of every FACT), prefers (chosen over wrong), text


def json_array(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, indent=2)  # LLaMA-Factory ships .json arrays


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


CASES = [
    Case("alpaca-system-history", "alpaca.json", json_array(alpaca_sft()), {"type": "sft"}),
    Case("sharegpt-system", "sharegpt.json", json_array(sharegpt_sft()), {"type": "sft"}),
    Case("openai-via-columns-and-tags", "dialog.jsonl", jsonl(openai_via_tags()), {"type": "sft"},
         {"format": "sharegpt", "columns": {"messages": "dialog"},
          "tags": {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant",
                   "systemTag": "system"}}),
    Case("alpaca-renamed-columns", "qa.jsonl", jsonl(renamed_alpaca()), {"type": "sft"},
         {"columns": {"prompt": "question", "query": "context", "response": "answer"}}),
    Case("alpaca-preference-dpo", "pairs.json", json_array(alpaca_preference()), {"type": "dpo"}, learns="prefers"),
    Case("sharegpt-preference-dpo", "pairs.json", json_array(sharegpt_preference()), {"type": "dpo"}, learns="prefers"),
    Case("sharegpt-kto", "kto.json", json_array(sharegpt_kto()), {"type": "kto"}, learns="prefers"),
    Case("alpaca-kto", "kto.json", json_array(alpaca_kto()), {"type": "kto"}, learns="prefers"),
    Case("pretraining-txt", "corpus.txt", pretraining_lines(), {"type": "cpt"}, learns="text"),
    Case("pretraining-jsonl-renamed", "corpus.jsonl", jsonl([{"body": f"{q} {a}"} for _, q, a in _facts(64)]),
         {"type": "cpt"}, {"columns": {"prompt": "body"}}, learns="text"),
]


# Cases whose records normalise to exactly those of another case (test_formats_llamafactory checks it): real
# training runs once per group (test_training_formats), on the second of each pair.
SAME_RECORDS = [("sharegpt-system", "openai-via-columns-and-tags"), ("alpaca-preference-dpo", "sharegpt-preference-dpo"),
                ("sharegpt-kto", "alpaca-kto"), ("pretraining-jsonl-renamed", "pretraining-txt")]


def write(case: Case, folder: Path) -> Path:
    path = folder / case.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(case.content)
    return path
