"""The prompt sets of spec.evaluation: spec.evaluation.prompts and regressionSet (fetched like the dataset: same URI
schemes, same file types), or the held-out split.

A record of a prompt file is one of:
- {"prompt": "text" | [chat messages ending with a user turn], "reference"?: "text"} ("label" or "completion"
  may stand for "reference");
- {"messages": [..., {"role": "assistant", "content": "text"}]}: the turns before the last assistant turn are
  the prompt, that turn is the reference (a training-shaped chat file can be used as is).
The held-out split gives the same: the last assistant turn of chat data, the completion (or the chosen answer)
of prompt/completion data; text data has no prompts (spec.evaluation.prompts is then needed).
Problems are reported as `file:line: ...` (a UserError, before the base model is downloaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.evaluation import EvaluationSpec, MetricName

from .data import MAX_PROBLEMS, read_file
from .errors import DataError, UserError
from .fetch import fetch_dataset

Prompt = str | list[dict[str, Any]]
REFERENCE_KEYS = ("reference", "label", "completion")
SETS = {"task": "prompts", "regression": "regression_set"}  # set name -> its EvaluationSpec field


@dataclass(frozen=True)
class Item:
    prompt: Prompt
    reference: str | None


def _text(value: Any) -> str | None:
    """A reference: a string, or the content of the last message of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def _messages_ok(messages: Any) -> bool:
    return (isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages))


def from_record(record: Any) -> tuple[Item | None, str | None]:
    """(item, None) or (None, problem)."""
    if not isinstance(record, dict):
        return None, "must be an object with a prompt (or messages)"
    if "messages" in record and "prompt" not in record:
        messages = record["messages"]
        if not _messages_ok(messages):
            return None, "messages must be a list of {role, content} objects"
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            return (Item(messages, None), None) if messages[-1]["role"] == "user" else \
                (None, "messages must end with a user turn, or hold an assistant turn (the reference)")
        if last == 0:
            return None, "messages: the assistant turn has no prompt before it"
        return Item(messages[:last], messages[last]["content"]), None
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        if not _messages_ok(prompt) or prompt[-1]["role"] != "user":
            return None, "prompt: chat messages must be {role, content} objects ending with a user turn"
    elif not isinstance(prompt, str) or not prompt.strip():
        return None, "prompt: missing or empty (a string, or chat messages ending with a user turn)"
    key = next((k for k in REFERENCE_KEYS if record.get(k) is not None), None)
    reference = _text(record[key]) if key else None
    if key and reference is None:
        return None, f"{key}: must be a string"
    return Item(prompt, reference), None


def from_held_out(records: list[dict[str, Any]]) -> list[Item]:
    """Items of the held-out split (normalised training records)."""
    items = []
    for record in records:
        if "messages" in record:
            item, _ = from_record({"messages": [m for m in record["messages"] if isinstance(m.get("content"), str)]})
        elif "prompt" in record:
            answer = record.get("completion", record.get("chosen"))
            item = Item(record["prompt"], _text(answer)) if isinstance(record["prompt"], (str, list)) else None
        else:
            item = None
        if item is not None:
            items.append(item)
    if not items:
        raise UserError("spec.evaluation: the held-out data has no prompts to evaluate (text data has none): set "
                        "spec.evaluation.prompts to a file of prompts")
    return items


def load_items(files: list[Path], uri: str, spec: EvaluationSpec, field: str) -> list[Item]:
    """Parse and check a prompt file; the first maxPrompts records."""
    items: list[Item] = []
    problems: list[str] = []
    for path in files:
        for where, record, problem in read_file(path):
            if problem is None:
                item, problem = from_record(record)
                if item is not None and MetricName.REGEX in spec.metrics and item.reference is not None:
                    try:
                        re.compile(item.reference)
                    except re.error as exc:
                        problem = f"reference is not a regular expression (metric regex): {exc}"
                if problem is None:
                    items.append(item)
            if problem is not None:
                problems.append(f"{where}: {problem}")
            if len(problems) >= MAX_PROBLEMS:
                break
    if problems:
        raise DataError(f"spec.evaluation.{field} {uri} is invalid", problems)
    if not items:
        raise UserError(f"spec.evaluation.{field} {uri} holds no prompts")
    return items[:spec.max_prompts]


def fetch_sets(spec: EvaluationSpec, work_dir: Path) -> dict[str, list[str]]:
    """Download the prompt files of the spec: {set name: local files} (validated on the way)."""
    out = {}
    for name, attribute in SETS.items():
        uri = getattr(spec, attribute)
        if uri:
            files = fetch_dataset(uri, work_dir / "evaluation" / name)
            load_items(files, uri, spec, _camel(attribute))
            out[name] = [str(f) for f in files]
    return out


def load_sets(spec: EvaluationSpec, files: dict[str, list[str]], held_out: list[dict[str, Any]]) -> dict[str, list[Item]]:
    """{set name: items}: the task set (the prompt file, else the held-out split) and the regression set, if any."""
    sets = {}
    for name, attribute in SETS.items():
        uri = getattr(spec, attribute)
        if uri:
            sets[name] = load_items([Path(f) for f in files[name]], uri, spec, _camel(attribute))
        elif name == "task":
            sets[name] = from_held_out(held_out)[:spec.max_prompts]
    return sets


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def render_prompt(prompt: Prompt) -> str:
    """The prompt as EvalSample shows it: chat messages as 'role: text' lines."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
