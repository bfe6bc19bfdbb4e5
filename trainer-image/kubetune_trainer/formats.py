"""Dataset record formats: detection, per-record checks and normalisation. Pure functions.

Each checker takes one record (a dict) and the record's field names (`Names`: dataset.columns and dataset.tags,
None = the format's own) and returns (normalised record or None, problems). A problem names the field, under
the data's own name, like a JSON path: `messages[2].role must be one of system,user,assistant (got 'bot')`.

Accepted shapes (docs/data.md shows each):
- chatml      messages: [{role, content}], tools, tool_calls, weights   (OpenAI / TRL conversational; in full:
                                                                           kubetune_trainer.openai_chat)
- alpaca      instruction, input, output, system, history                 (LLaMA-Factory alpaca)
- sharegpt    conversations: [{from, value}], system, tools               (LLaMA-Factory sharegpt, tool turns
                                                                           included; other keys and role names
                                                                           through dataset.tags)
- preference  prompt/chosen/rejected (TRL), input/preferred_output/non_preferred_output (OpenAI's preference
              fine-tuning), instruction/input/chosen/rejected (LLaMA-Factory alpaca), or conversations +
              chosen/rejected message objects (LLaMA-Factory sharegpt)
- unpaired    prompt/completion/label (TRL), instruction/input/output/kto_tag or conversations/kto_tag
              (LLaMA-Factory KTO)
- text        text                                                          (.txt files: one document per line)
LLaMA-Factory's own shapes are checked in kubetune_trainer.llamafactory; this module detects, dispatches
(CHECKERS, check_record) and checks the TRL / OpenAI shapes.

Normalised forms (what TRL consumes):
- chatml, alpaca, sharegpt -> {"messages": [{"role", "content"}, ...]}, plus "tools" and the tool keys of
                              openai_chat's form where the record uses tools (kubetune_trainer.chat renders those)
- preference               -> {"prompt", "chosen", "rejected"} as strings, or as message lists
- unpaired                 -> {"prompt", "completion", "label": bool} as strings, or as message lists
- text                     -> {"text": str}
LLaMA-Factory's alpaca- and sharegpt-shaped preference and unpaired records always become message lists (it
always applies the chat template), as do OpenAI's preference records; TRL's string-form prompt records stay strings.
"""

from __future__ import annotations

from typing import Any

from . import llamafactory, openai_chat
from .fields import DEFAULT_NAMES, Names, Result, objects, show, string, type_name
from .llamafactory import check_alpaca, check_sharegpt

__all__ = ["CHAT_FORMATS", "CHECKERS", "COLUMNS_USED", "DEFAULT_NAMES", "TAGGED_FORMATS", "Names", "Result",
           "as_conversational", "check_alpaca", "check_chatml", "check_messages", "check_preference", "check_record",
           "check_sharegpt", "check_text", "check_unpaired", "detect"]

ROLES = ("system", "user", "assistant")
CHAT_FORMATS = ("chatml", "alpaca", "sharegpt")  # normalised to {"messages"}

# Which dataset.columns each format reads (any other set column is a mistake: data.check_names says so).
COLUMNS_USED = {
    "chatml": ("messages",),
    "alpaca": ("prompt", "query", "response", "history", "system"),
    "sharegpt": ("messages", "system", "tools"),
    "preference": ("prompt", "query", "history", "system", "messages", "chosen", "rejected"),
    "unpaired": ("prompt", "query", "response", "history", "system", "messages", "kto_tag"),
    "text": ("prompt",),
}
TAGGED_FORMATS = ("sharegpt", "preference", "unpaired")  # formats with a sharegpt shape: dataset.tags apply


def detect(record: Any, names: Names = DEFAULT_NAMES) -> str | None:
    """The format a record looks like (by its keys, under the data's names), or None."""
    if not isinstance(record, dict):
        return None
    if names.has(record, "kto_tag", "kto_tag") or ({"completion", "label"} <= set(record)):
        return "unpaired"
    if names.has(record, "chosen", "chosen") or names.has(record, "rejected", "rejected"):
        return "preference"
    if is_openai_preference(record):
        return "preference"
    if names.messages and names.messages in record:
        value = record[names.messages]
        first = value[0] if isinstance(value, list) and value else None
        plain = isinstance(first, dict) and "role" in first and not names.tags()
        return "chatml" if plain else "sharegpt"
    if "messages" in record and not names.messages:
        return "chatml"
    if "conversations" in record:
        return "sharegpt"
    if names.prompt and names.prompt in record:  # LLaMA-Factory maps both the instruction and the text this way
        return "alpaca" if names.has(record, "response", "output") else "text"
    if "instruction" in record or (names.has(record, "response", "output") and names.has(record, "query", "input")):
        return "alpaca"
    if "text" in record and not names.prompt:
        return "text"
    return None


def check_messages(value: Any, field: str, *, role_key: str = "role", content_key: str = "content",
                   roles: dict[str, str] | None = None, need_assistant: bool = True) -> tuple[list | None, list[str]]:
    """A list of chat messages -> [{"role", "content"}] with roles system/user/assistant."""
    roles = roles or {r: r for r in ROLES}
    allowed = ",".join(dict.fromkeys(roles))
    if not isinstance(value, list):
        return None, [f"{field} must be a list of messages (got {type_name(value)})"]
    if not value:
        return None, [f"{field} must not be empty"]
    problems: list[str] = []
    out = []
    for i, where, message in objects(value, field, problems, f"{role_key} and {content_key}"):
        role = message.get(role_key)
        content = message.get(content_key)
        if role is None:
            problems.append(f"{where}.{role_key} is missing")
        elif role not in roles:
            problems.append(f"{where}.{role_key} must be one of {allowed} (got {show(role)})")
        elif roles[role] == "system" and i != 0:
            problems.append(f"{where}.{role_key}: a system message is only allowed first")
        if content is None:
            problems.append(f"{where}.{content_key} is missing")
        elif not isinstance(content, str):
            problems.append(f"{where}.{content_key} must be a string (got {type_name(content)})")
        elif not content.strip() and roles.get(role) != "system":
            problems.append(f"{where}.{content_key} must not be empty")
        if not problems:
            out.append({"role": roles[role], "content": content})
    if not problems and need_assistant and not any(m["role"] == "assistant" for m in out):
        problems.append(f"{field} has no assistant message (nothing to learn from)")
    return (None, problems) if problems else (out, [])


def check_chatml(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    field = names.col("messages", "messages")
    if field not in record:
        return None, [f'missing field "{field}"']
    if openai_chat.uses_tools(record, field):  # tools, calls, tool answers, weights: OpenAI's chat format in full
        return openai_chat.check_chat(record, field=field)
    messages, problems = check_messages(record[field], field)
    return ({"messages": messages} if messages else None), problems


# ---------------------------------------------------------------------------- preference and unpaired


def _side(record: dict, field: str, conversational: bool, names: Names = DEFAULT_NAMES) -> tuple[Any, list[str]]:
    """An answer: a string, a list of assistant messages, or (sharegpt shape) one message object."""
    if field not in record or record[field] is None:
        return None, [f'missing field "{field}"']
    value = record[field]
    if isinstance(value, str):
        if not value.strip():
            return None, [f"{field} must not be empty"]
        return ([{"role": "assistant", "content": value}] if conversational else value), []
    if isinstance(value, dict):  # LLaMA-Factory sharegpt: {"from": "gpt", "value": "..."}
        return llamafactory.sharegpt_answer(value, field, names)
    if isinstance(value, list):
        messages, problems = check_messages(value, field, need_assistant=False)
        if messages and any(m["role"] != "assistant" for m in messages):
            problems = [f"{field} must hold only assistant messages (the prompt holds the rest)"]
        return (messages if not problems else None), problems
    return None, [f"{field} must be a string, a message or a list of messages (got {type_name(value)})"]


def _prompt(record: dict, conversational: bool) -> tuple[Any, list[str]]:
    """The prompt of a TRL prompt/answer record: a string, or messages ending with a user turn."""
    prompt = record.get("prompt")
    if prompt is None:
        return None, ['missing field "prompt"']
    if isinstance(prompt, str):
        if not prompt.strip():
            return None, ["prompt must not be empty"]
        return ([{"role": "user", "content": prompt}] if conversational else prompt), []
    if isinstance(prompt, list):
        messages, problems = check_messages(prompt, "prompt", need_assistant=False)
        if messages and messages[-1]["role"] == "assistant":
            problems.append("prompt must end with a user message")
        return (messages if not problems else None), problems
    return None, [f"prompt must be a string or a list of messages (got {type_name(prompt)})"]


def _any_prompt(record: dict, names: Names, answers: tuple[str, ...]) -> tuple[Any, bool, list[str]]:
    """(prompt, conversational, problems) of a preference record in any of its three shapes: sharegpt (a
    conversation ending with the user's turn), alpaca (instruction/input/system/history), TRL."""
    if names.has(record, "messages", "conversations"):
        messages, problems = llamafactory.sharegpt_messages(record, names, ends_with="user", shape="preference")
        return messages, True, problems
    if names.prompt or "instruction" in record:
        messages, problems = llamafactory.alpaca_prompt(record, names, "preference")
        return messages, True, problems
    conversational = any(isinstance(record.get(k), list) for k in ("prompt", *answers))
    prompt, problems = _prompt(record, conversational)
    return prompt, conversational, problems


def check_preference(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    """prompt + chosen + rejected, in the TRL, OpenAI, LLaMA-Factory alpaca or LLaMA-Factory sharegpt shape."""
    if is_openai_preference(record) and not (names.chosen or names.rejected):
        return check_openai_preference(record)
    chosen_field, rejected_field = names.col("chosen", "chosen"), names.col("rejected", "rejected")
    prompt, conversational, problems = _any_prompt(record, names, (chosen_field, rejected_field))
    chosen, p1 = _side(record, chosen_field, conversational, names)
    rejected, p2 = _side(record, rejected_field, conversational, names)
    problems += p1 + p2
    if problems:
        return None, problems
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, []


# OpenAI's preference (DPO) fine-tuning records, as publicly documented (written from that shape, not fetched):
#   {"input": {"messages": [...ending with a user turn], "tools": [...], "parallel_tool_calls": bool},
#    "preferred_output": [{"role": "assistant", "content": str}], "non_preferred_output": [{...one message}]}
OPENAI_OUTPUTS = ("preferred_output", "non_preferred_output")
NO_TOOLS_IN_PREFERENCE = ("kubetune's preference training (DPO, ORPO, KTO) renders role/content messages only, so "
                          "tools would be missing from the training text: remove them, or train tool use with "
                          "supervised (chatml) data (docs/data.md)")


def is_openai_preference(record: dict) -> bool:
    """Whether a record has OpenAI's preference shape: an output field, or an `input` object (alpaca's is text)."""
    return any(k in record for k in OPENAI_OUTPUTS) or isinstance(record.get("input"), dict)


def _openai_tool_use(messages: list, field: str) -> list[str]:
    """Tool calls or tool answers among messages: refused, not dropped."""
    return [f"{field}[{i}]: tool calls and tool messages are not accepted in preference data: {NO_TOOLS_IN_PREFERENCE}"
            for i, m in enumerate(messages) if isinstance(m, dict) and (
                m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call"))]


def _openai_input(record: dict) -> tuple[list | None, list[str]]:
    """input.messages (system/user/assistant turns ending with the user's) -> the prompt's message list."""
    value = record.get("input")
    if value is None:
        return None, ['missing field "input"']
    if not isinstance(value, dict):
        return None, [f"input must be an object with messages (got {type_name(value)})"]
    problems = [] if value.get("tools") in (None, []) else [f"input.tools: {NO_TOOLS_IN_PREFERENCE}"]
    if value.get("messages") is None:
        return None, [*problems, 'missing field "input.messages"']
    if isinstance(value["messages"], list) and (tool_use := _openai_tool_use(value["messages"], "input.messages")):
        return None, problems + tool_use
    messages, more = check_messages(value["messages"], "input.messages", need_assistant=False)
    if messages and messages[-1]["role"] != "user":
        more.append(f"input.messages must end with a user message (got {messages[-1]['role']}): the outputs answer it")
    return (None, problems + more) if problems or more else (messages, [])


def _openai_output(record: dict, field: str) -> tuple[list | None, list[str]]:
    """preferred_output / non_preferred_output: a list holding exactly one assistant message."""
    value = record.get(field)
    if value is None:
        return None, [f'missing field "{field}"']
    if not isinstance(value, list) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, list) else type_name(value)
        return None, [f"{field} must be a list holding exactly one assistant message (got {got})"]
    if tool_use := _openai_tool_use(value, field):
        return None, tool_use
    messages, problems = check_messages(value, field, need_assistant=False)
    if messages and messages[0]["role"] != "assistant":
        return None, [f"{field}[0].role must be assistant (got {show(messages[0]['role'])}): the input holds the rest"]
    return messages, problems


def check_openai_preference(record: dict) -> Result:
    """OpenAI's preference record -> {"prompt", "chosen", "rejected"} as message lists (TRL's conversational
    preference form, the same as the TRL shape's)."""
    mixed = [k for k in ("prompt", "chosen", "rejected") if k in record]
    if mixed:
        return None, [f"{', '.join(mixed)}: TRL's fields beside OpenAI's input/preferred_output/non_preferred_output "
                      "(use one shape per record)"]
    prompt, problems = _openai_input(record)
    chosen, p1 = _openai_output(record, "preferred_output")
    rejected, p2 = _openai_output(record, "non_preferred_output")
    problems += p1 + p2
    if problems:
        return None, problems
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, []


def _label(record: dict, field: str) -> tuple[bool | None, list[str]]:
    """A desirable/undesirable flag: a boolean, or "true"/"false" (a CSV cell)."""
    value = record.get(field)
    if value is None:
        return None, [f'missing field "{field}"']
    if isinstance(value, bool):
        return value, []
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true", []
    return None, [f"{field} must be true or false (got {show(value)})"]


def check_unpaired(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    """One answer judged alone (KTO's data): TRL's unpaired preference type (prompt + completion + label, true =
    desirable), or LLaMA-Factory's KTO shapes with `kto_tag` as the label: sharegpt (the conversation's last,
    assistant turn is the completion) or alpaca (instruction/input + output)."""
    if names.has(record, "messages", "conversations"):  # LLaMA-Factory sharegpt
        label, problems = _label(record, names.col("kto_tag", "kto_tag"))
        messages, more = llamafactory.sharegpt_messages(record, names, ends_with="assistant", shape="KTO")
        problems += more
        prompt, completion = (messages[:-1], messages[-1:]) if messages else (None, None)
    elif names.prompt or "instruction" in record:  # LLaMA-Factory alpaca
        label, problems = _label(record, names.col("kto_tag", "kto_tag"))
        prompt, more = llamafactory.alpaca_prompt(record, names, "KTO")
        completion, more2 = _side(record, names.col("response", "output"), True, names)
        problems += more + more2
    else:  # TRL
        completion_field = names.col("response", "completion")
        conversational = any(isinstance(record.get(k), list) for k in ("prompt", completion_field))
        prompt, problems = _prompt(record, conversational)
        completion, more = _side(record, completion_field, conversational, names)
        label, more2 = _label(record, names.kto_tag or ("kto_tag" if "kto_tag" in record else "label"))
        problems += more + more2
    if problems:
        return None, problems
    return {"prompt": prompt, "completion": completion, "label": label}, []


def check_text(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    text, problems = string(record, names.col("prompt", "text"))
    return ({"text": text} if text is not None else None), problems


CHECKERS = {
    "chatml": check_chatml,
    "alpaca": check_alpaca,
    "sharegpt": check_sharegpt,
    "preference": check_preference,
    "unpaired": check_unpaired,
    "text": check_text,
}


def check_record(fmt: str, record: Any, names: Names = DEFAULT_NAMES) -> Result:
    """Validate and normalise one record of format fmt, its fields named by `names` (dataset.columns/tags)."""
    if not isinstance(record, dict):
        return None, [f"must be a JSON object (got {type_name(record)})"]
    return CHECKERS[fmt](record, names)


def as_conversational(record: dict) -> dict:
    """A string-form prompt record (preference, ...) in message-list form (to mix with conversational ones):
    the prompt becomes a user message, every other string field an assistant message."""
    if isinstance(record["prompt"], list):
        return record
    return {key: ([{"role": "user" if key == "prompt" else "assistant", "content": value}]
                  if isinstance(value, str) else value) for key, value in record.items()}
