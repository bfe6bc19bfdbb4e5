"""Chat records with tools, tool calls or per-message weights -> token ids and a loss mask, through the
model's own chat template.

TRL's SFTTrainer renders `messages` itself, and learns only the assistant's tokens when the template
marks them with `{% generation %}` (`assistant_only_loss`). It cannot skip an assistant turn (OpenAI's
`"weight": 0`), and a dataset whose rows differ in shape (a call in one message, none in the next)
goes through Arrow, which fills every message with every key as null. So records that use tools, calls
or weights are tokenized here instead, straight from the validated Python records, and handed to TRL
as `input_ids` + `assistant_masks` (TRL turns the mask into labels, then truncates or packs as usual):

- the template: TRL's training variant of the tokenizer's template where TRL has one (prefix-preserving,
  e.g. Qwen3's), else the tokenizer's own; tool definitions go in as `apply_chat_template(tools=...)`,
  calls as the assistant messages' `tool_calls` (arguments as an object), answers as `tool` messages;
- the mask, by rendering prefixes: assistant turn i spans from the end of
  `render(messages[:i], add_generation_prompt=True)` to the end of `render(messages[:i+1])` (trailing
  whitespace after the end-of-turn token excluded). Both must be prefixes of the whole rendering, or the
  template renders a turn differently depending on what follows and there is no honest mask: the
  record is refused. Tokens are assigned by character offset, so this needs a fast tokenizer and works
  whether or not the template has `{% generation %}` markers (with markers, the masks are the same:
  tests/trainer/test_tools.py checks it). Turns with weight 0 stay in the context, out of the loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import UserError
from .openai_chat import TOOL_KEYS


def needs_rendering(records: Iterable[dict[str, Any]]) -> bool:
    """Whether any record uses tools, tool calls, tool answers or weights (then all are tokenized here)."""
    for record in records:
        if "tools" in record:
            return True
        for message in record.get("messages") or []:
            if message.get("role") == "tool" or any(key in message for key in TOOL_KEYS):
                return True
    return False


def training_template(tokenizer) -> str:
    """The template to render with: TRL's training variant where it has one, else the tokenizer's."""
    from trl.chat_template_utils import get_training_chat_template

    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template["default"]
    try:
        patched = get_training_chat_template(tokenizer)
    except Exception:  # noqa: BLE001 - a template TRL does not know: render with the model's own
        patched = None
    return patched or template


def features(record: dict[str, Any]) -> set[str]:
    """What a record needs a template to render: "tools" (definitions), "calls" (tool calls or tool answers)."""
    calls = any(m.get("tool_calls") or m["role"] == "tool" for m in record["messages"])
    return ({"tools"} & set(record)) | ({"calls"} if calls else set())


def check_template(tokenizer, template: str, records: list[dict[str, Any]], model: str) -> None:
    """Refuse a template that would drop tool definitions or calls from the training text."""
    from trl.chat_template_utils import supports_tool_calling

    needs = set().union(*map(features, records))
    uses_tools, uses_calls = "tools" in needs, "calls" in needs
    sentinel = "kubetune_probe_tool_3f9a"
    if uses_tools:
        probe = [{"role": "user", "content": "hi"}]
        tools = [{"type": "function", "function": {"name": sentinel, "description": "probe",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        if sentinel not in _render(tokenizer, template, probe, tools, generation_prompt=True):
            raise UserError(f"the chat template of {model} ignores tools: the tool definitions of the data would "
                            "not be in the training text (use a model whose chat template renders tools)")
    if uses_calls and not supports_tool_calling(tokenizer):
        raise UserError(f"the chat template of {model} drops tool calls or tool messages (TRL's "
                        "supports_tool_calling): use a model whose chat template renders tool_calls and tool messages")


def _render(tokenizer, template: str, messages: list[dict], tools: list | None, *, generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise UserError(f"the chat template refused a conversation of the data: {exc}") from None


def _messages(record: dict[str, Any]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "weight"} for m in record["messages"]]  # weights steer the mask only


def render(tokenizer, template: str, record: dict[str, Any]) -> str:
    """The training text of one record: what `tokenize` tokenizes (pre-flight counts its tokens with this too)."""
    return _render(tokenizer, template, _messages(record), record.get("tools"), generation_prompt=False)


def spans(tokenizer, template: str, record: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    """(the whole rendering, [(start, end) character span of each learned assistant turn])."""
    tools, messages = record.get("tools"), _messages(record)
    full = render(tokenizer, template, record)
    out = []
    for i, message in enumerate(record["messages"]):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        if i == 0:
            raise UserError("messages[0] is an assistant message: a conversation starts with a system or user message")
        before = _render(tokenizer, template, messages[:i], tools, generation_prompt=True)
        through = _render(tokenizer, template, messages[: i + 1], tools, generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise UserError(f"the chat template renders messages[{i}] (assistant) differently depending on what "
                            "follows it, so its tokens cannot be told apart for the loss; use a prefix-preserving "
                            "template (TRL's training templates are)")
        end = len(through.rstrip())
        if end > len(before):
            out.append((len(before), end))
    return full, out


def tokenize(tokenizer, template: str, record: dict[str, Any]) -> dict[str, list[int]]:
    """One record -> {"input_ids", "assistant_masks"} (1 = learned: a weight-1 assistant turn's tokens)."""
    full, learned = spans(tokenizer, template, record)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= first < end for start, end in learned) and last > first)
            for first, last in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def tokenize_all(tokenizer, records: list[dict[str, Any]], model: str, *, template: str | None = None) -> list[dict]:
    """Every record tokenized and masked (see the module docstring). Raises UserError naming what is wrong."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the tokenizer of {model} is not a fast tokenizer: records with tools or weights need "
                        "character offsets to find the assistant's tokens")
    template = template or training_template(tokenizer)
    check_template(tokenizer, template, records, model)
    rows = []
    for n, record in enumerate(records):
        try:
            rows.append(tokenize(tokenizer, template, record))
        except UserError as exc:
            raise UserError(f"example {n + 1} of {len(records)}: {exc}") from None
    return rows


def cut_by_max_length(rows: list[dict[str, list[int]]], max_length: int | None) -> str | None:
    """A warning when rows are longer than maxLength (TRL cuts them there: a tool definition block easily makes a
    conversation longer than expected), saying how many learned tokens are lost. None when nothing is cut."""
    if not max_length:
        return None
    long = [row for row in rows if len(row["input_ids"]) > max_length]
    if not long:
        return None
    lost = sum(sum(row["assistant_masks"][max_length:]) for row in long)
    return (f"{len(long)} of {len(rows)} examples are longer than maxLength {max_length} tokens (longest "
            f"{max(len(r['input_ids']) for r in long)}); they are cut there, losing {lost} of the assistant's tokens: "
            "raise hyperparameters.maxLength")
