"""Dataset record formats: detection, per-record checks and normalisation. Pure functions.

Each checker takes one record (a dict) and the record's field names (`Names`: dataset.columns and dataset.tags,
None = the format's own) and returns (normalised record or None, problems). A problem names the field, under
the data's own name, like a JSON path: `messages[2].role must be one of system,user,assistant (got 'bot')`.

Accepted shapes (docs/data.md shows each):
- chatml      messages: [{role, content}]                                  (OpenAI / TRL conversational)
- alpaca      instruction, input, output, system, history                 (LLaMA-Factory alpaca)
- sharegpt    conversations: [{from, value}], system                      (LLaMA-Factory sharegpt; other keys and
                                                                           role names through dataset.tags)
- preference  prompt/chosen/rejected (TRL), instruction/input/chosen/rejected (LLaMA-Factory alpaca), or
              conversations + chosen/rejected message objects (LLaMA-Factory sharegpt)
- unpaired    prompt/completion/label (TRL), instruction/input/output/kto_tag or conversations/kto_tag
              (LLaMA-Factory KTO)
- text        text                                                          (.txt files: one document per line)

Normalised forms (what TRL consumes):
- chatml, alpaca, sharegpt -> {"messages": [{"role", "content"}, ...]}
- preference               -> {"prompt", "chosen", "rejected"} as strings, or as message lists
- unpaired                 -> {"prompt", "completion", "label": bool} as strings, or as message lists
- text                     -> {"text": str}
LLaMA-Factory's alpaca- and sharegpt-shaped preference and unpaired records always become message lists (it
always applies the chat template); TRL's string-form prompt records stay strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import openai_chat

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_FORMATS = ("chatml", "alpaca", "sharegpt")  # normalised to {"messages"}
# Fields that hold nested JSON (a CSV cell then holds it as JSON text).
JSON_FIELDS = ("messages", "conversations", "prompt", "chosen", "rejected", "completion", "history", "tools")

Result = tuple[dict[str, Any] | None, list[str]]


@dataclass(frozen=True)
class Names:
    """Where records keep each part: dataset.columns and dataset.tags (LLaMA-Factory's dataset_info.json
    `columns` and `tags`, same names). None: the format's own name."""

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None
    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None

    @classmethod
    def of(cls, dataset: Any) -> Names:
        """From a FineTuneJob spec.dataset (kubetune.api Dataset); None gives the formats' own names."""
        values: dict[str, str] = {}
        for part in (getattr(dataset, "columns", None), getattr(dataset, "tags", None)):
            if part is not None:
                values |= part.model_dump(exclude_none=True)
        return cls(**values)

    def columns(self) -> dict[str, str]:
        """The dataset.columns set: {part: field name}."""
        return {f.name: v for f in dataclasses.fields(self) if not f.name.endswith("_tag") or f.name == "kto_tag"
                if (v := getattr(self, f.name))}

    def tags(self) -> dict[str, str]:
        """The dataset.tags set: {tag: value}."""
        return {f.name: v for f in dataclasses.fields(self) if f.name.endswith("_tag") and f.name != "kto_tag"
                if (v := getattr(self, f.name))}

    def json_fields(self) -> tuple[str, ...]:
        """Fields that may hold nested JSON (as text in a CSV cell), under the data's names."""
        mapped = [getattr(self, p) for p in ("messages", "prompt", "chosen", "rejected", "response", "history", "tools")]
        return tuple(dict.fromkeys([*JSON_FIELDS, *filter(None, mapped)]))


DEFAULT_NAMES = Names()

# Which dataset.columns each format reads (any other set column is a mistake: data.check_names says so).
COLUMNS_USED = {
    "chatml": ("messages",),
    "alpaca": ("prompt", "query", "response", "history", "system"),
    "sharegpt": ("messages", "system"),
    "preference": ("prompt", "query", "history", "system", "messages", "chosen", "rejected"),
    "unpaired": ("prompt", "query", "response", "history", "system", "messages", "kto_tag"),
    "text": ("prompt",),
}
TAGGED_FORMATS = ("sharegpt", "preference", "unpaired")  # formats with a sharegpt shape: dataset.tags apply


def _col(names: Names, part: str, default: str) -> str:
    return getattr(names, part) or default


def _has(record: dict, names: Names, part: str, *defaults: str) -> bool:
    mapped = getattr(names, part)
    return mapped in record if mapped else any(d in record for d in defaults)


def detect(record: Any, names: Names = DEFAULT_NAMES) -> str | None:
    """The format a record looks like (by its keys, under the data's names), or None."""
    if not isinstance(record, dict):
        return None
    if _has(record, names, "kto_tag", "kto_tag") or ({"completion", "label"} <= set(record)):
        return "unpaired"
    if _has(record, names, "chosen", "chosen") or _has(record, names, "rejected", "rejected"):
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
        return "alpaca" if _has(record, names, "response", "output") else "text"
    if "instruction" in record or (_has(record, names, "response", "output") and _has(record, names, "query", "input")):
        return "alpaca"
    if "text" in record and not names.prompt:
        return "text"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _string(record: dict, field: str, *, required: bool = True, allow_empty: bool = False) -> tuple[str | None, list[str]]:
    if field not in record or record[field] is None:
        return None, ([f'missing field "{field}"'] if required else [])
    value = record[field]
    if not isinstance(value, str):
        return None, [f"{field} must be a string (got {_type_name(value)})"]
    if not allow_empty and not value.strip():
        return None, [f"{field} must not be empty"]
    return value, []


def check_messages(value: Any, field: str, *, role_key: str = "role", content_key: str = "content",
                   roles: dict[str, str] | None = None, need_assistant: bool = True) -> tuple[list | None, list[str]]:
    """A list of chat messages -> [{"role", "content"}] with roles system/user/assistant."""
    roles = roles or {r: r for r in ROLES}
    allowed = ",".join(dict.fromkeys(roles))
    if not isinstance(value, list):
        return None, [f"{field} must be a list of messages (got {_type_name(value)})"]
    if not value:
        return None, [f"{field} must not be empty"]
    problems: list[str] = []
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object with {role_key} and {content_key} (got {_type_name(message)})")
            continue
        role = message.get(role_key)
        content = message.get(content_key)
        if role is None:
            problems.append(f"{where}.{role_key} is missing")
        elif role not in roles:
            problems.append(f"{where}.{role_key} must be one of {allowed} (got {_show(role)})")
        elif roles[role] == "system" and i != 0:
            problems.append(f"{where}.{role_key}: a system message is only allowed first")
        if content is None:
            problems.append(f"{where}.{content_key} is missing")
        elif not isinstance(content, str):
            problems.append(f"{where}.{content_key} must be a string (got {_type_name(content)})")
        elif not content.strip() and roles.get(role) != "system":
            problems.append(f"{where}.{content_key} must not be empty")
        if not problems:
            out.append({"role": roles[role], "content": content})
    if not problems and need_assistant and not any(m["role"] == "assistant" for m in out):
        problems.append(f"{field} has no assistant message (nothing to learn from)")
    return (None, problems) if problems else (out, [])


def check_chatml(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    field = _col(names, "messages", "messages")
    if field not in record:
        return None, [f'missing field "{field}"']
    if openai_chat.uses_tools(record, field):  # tools, calls, tool answers, weights: OpenAI's chat format in full
        return openai_chat.check_chat(record, field=field)
    messages, problems = check_messages(record[field], field)
    return ({"messages": messages} if messages else None), problems


# ------------------------------------------------------------------------ LLaMA-Factory: sharegpt shape


@dataclass(frozen=True)
class _Tags:
    """The message keys and role values of sharegpt-shaped data (dataset.tags over sharegpt's own)."""

    role: str
    content: str
    roles: dict[str, str]  # role value -> system/user/assistant
    user: str  # for messages: the names of each side as the data spells them
    assistant: str


def _tags(names: Names) -> _Tags:
    role, content = names.role_tag or "from", names.content_tag or "value"
    user, assistant, system = names.user_tag or "human", names.assistant_tag or "gpt", names.system_tag or "system"
    if any((names.user_tag, names.assistant_tag, names.system_tag)):  # the data's own role names, only those
        roles = {user: "user", assistant: "assistant", system: "system"}
    else:  # sharegpt's (and the role/content names many exports use)
        roles = dict(SHAREGPT_ROLES)
    for tag, default in (("observation_tag", "observation"), ("function_tag", "function_call")):
        roles.setdefault(getattr(names, tag) or default, tag)  # tool turns: refused with a message below
    return _Tags(role, content, roles, user, assistant)


def _conversation(value: Any, field: str, names: Names, *, ends_with: str) -> tuple[list | None, list[str]]:
    """A sharegpt conversation -> messages, by LLaMA-Factory's rules: an optional system message first, then
    turns alternating user, assistant, user, ... ending with `ends_with` ("assistant": the answer to learn;
    "user": the prompt of a preference pair)."""
    tags = _tags(names)
    if not isinstance(value, list):
        return None, [f"{field} must be a list of messages (got {_type_name(value)})"]
    if not value:
        return None, [f"{field} must not be empty"]
    problems: list[str] = []
    out: list[dict[str, str]] = []
    first = value[0].get(tags.role) if isinstance(value[0], dict) else None
    start = 1 if isinstance(first, str) and tags.roles.get(first) == "system" else 0
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where} must be an object with {tags.role} and {tags.content} (got {_type_name(message)})")
            continue
        role, content = message.get(tags.role), message.get(tags.content)
        mapped = tags.roles.get(role) if isinstance(role, str) else None
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role is None:
            problems.append(f"{where}.{tags.role} is missing")
        elif mapped is None:
            allowed = ",".join(r for r, m in tags.roles.items() if not m.endswith("_tag"))
            problems.append(f"{where}.{tags.role} must be one of {allowed} (got {_show(role)})")
        elif mapped.endswith("_tag"):
            problems.append(f"{where}.{tags.role}: {role!r} (a tool-call turn) is not supported in sharegpt data: "
                            "write tool calls in the chatml (OpenAI) format, docs/data.md")
        elif mapped == "system" and i != 0:
            problems.append(f"{where}.{tags.role}: a system message is only allowed first")
        elif mapped != "system" and mapped != expected and not any("turns alternate" in p for p in problems):
            want = tags.user if expected == "user" else tags.assistant
            problems.append(f"{where}.{tags.role} must be {want!r} here (got {role!r}): turns alternate "
                            f"{tags.user}, {tags.assistant}, ... starting with {tags.user}")
        if content is None:
            problems.append(f"{where}.{tags.content} is missing")
        elif not isinstance(content, str):
            problems.append(f"{where}.{tags.content} must be a string (got {_type_name(content)})")
        elif not content.strip() and mapped != "system":
            problems.append(f"{where}.{tags.content} must not be empty")
        if not problems:
            out.append({"role": mapped, "content": content})
    if problems:
        return None, problems
    if len(out) == start or out[-1]["role"] != ends_with:
        side = tags.assistant if ends_with == "assistant" else tags.user
        why = "the answer to learn" if ends_with == "assistant" else "the prompt that chosen and rejected answer"
        return None, [f"{field} must end with a {side!r} turn ({why})"]
    return out, []


def _no_tools(record: dict, names: Names) -> list[str]:
    """Tool descriptions are not dropped without a word: alpaca/sharegpt data cannot carry them (yet)."""
    field = _col(names, "tools", "tools")
    if record.get(field) in (None, "", "[]", []):
        return []
    return [f"{field}: tool descriptions are not supported in alpaca or sharegpt data; write tool-calling examples "
            "in the chatml (OpenAI) format (docs/data.md)"]


def _with_system(messages: list[dict], record: dict, names: Names) -> tuple[list | None, list[str]]:
    """The system column as the first message, unless the conversation starts with one (LLaMA-Factory: the
    system message overrides the column)."""
    field = _col(names, "system", "system")
    system, problems = _string(record, field, required=False, allow_empty=True)
    problems += _no_tools(record, names)
    if problems:
        return None, problems
    if system and system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages], []
    return messages, []


def _sharegpt_messages(record: dict, names: Names, *, ends_with: str) -> tuple[list | None, list[str]]:
    field = _col(names, "messages", "conversations")
    if field not in record:
        return None, [f'missing field "{field}"']
    messages, problems = _conversation(record[field], field, names, ends_with=ends_with)
    if problems:
        return None, problems
    return _with_system(messages, record, names)  # type: ignore[arg-type]


def check_sharegpt(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    messages, problems = _sharegpt_messages(record, names, ends_with="assistant")
    return ({"messages": messages} if messages else None), problems


# -------------------------------------------------------------------------- LLaMA-Factory: alpaca shape


def _history(record: dict, names: Names) -> tuple[list, list[str]]:
    """history: [[user, assistant], ...], the turns before the instruction (LLaMA-Factory alpaca)."""
    field = _col(names, "history", "history")
    value = record.get(field)
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [f"{field} must be a list of [user, assistant] pairs (got {_type_name(value)})"]
    out, problems = [], []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            problems.append(f"{field}[{i}] must be a [user, assistant] pair of strings (got {_show(pair)})")
        elif not (pair[0].strip() and pair[1].strip()):
            problems.append(f"{field}[{i}] must not hold an empty turn")
        else:
            out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out, problems


def _alpaca_prompt(record: dict, names: Names) -> tuple[list | None, list[str]]:
    """system + history + the user turn (instruction, a newline, input), as LLaMA-Factory builds it."""
    instruction, problems = _string(record, _col(names, "prompt", "instruction"))
    extra, p1 = _string(record, _col(names, "query", "input"), required=False, allow_empty=True)
    system, p2 = _string(record, _col(names, "system", "system"), required=False, allow_empty=True)
    history, p3 = _history(record, names)
    problems += p1 + p2 + p3 + _no_tools(record, names)
    if problems:
        return None, problems
    user = instruction + (f"\n{extra}" if extra and extra.strip() else "")  # type: ignore[operator]
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + history + [
        {"role": "user", "content": user}], []


def check_alpaca(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    prompt, problems = _alpaca_prompt(record, names)
    output, more = _string(record, _col(names, "response", "output"))
    problems += more
    if problems:
        return None, problems
    return {"messages": [*prompt, {"role": "assistant", "content": output}]}, []  # type: ignore[misc]


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
        tags = _tags(names)
        role, content = value.get(tags.role), value.get(tags.content)
        if not isinstance(role, str) or tags.roles.get(role) != "assistant":
            return None, [f"{field}.{tags.role} must be {tags.assistant!r} (got {_show(role)})"]
        if not isinstance(content, str) or not content.strip():
            return None, [f"{field}.{tags.content} must be a non-empty string (got {_show(content)})"]
        return [{"role": "assistant", "content": content}], []
    if isinstance(value, list):
        messages, problems = check_messages(value, field, need_assistant=False)
        if messages and any(m["role"] != "assistant" for m in messages):
            problems = [f"{field} must hold only assistant messages (the prompt holds the rest)"]
        return (messages if not problems else None), problems
    return None, [f"{field} must be a string, a message or a list of messages (got {_type_name(value)})"]


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
    return None, [f"prompt must be a string or a list of messages (got {_type_name(prompt)})"]


def _any_prompt(record: dict, names: Names, answers: tuple[str, ...], *, ends_with: str = "user") -> tuple[Any, bool, list[str]]:
    """(prompt, conversational, problems) of a preference or unpaired record in any of its three shapes:
    sharegpt (a conversation; `ends_with` its last turn), alpaca (instruction/input/system/history), TRL."""
    if _has(record, names, "messages", "conversations"):
        messages, problems = _sharegpt_messages(record, names, ends_with=ends_with)
        return messages, True, problems
    if names.prompt or "instruction" in record:
        messages, problems = _alpaca_prompt(record, names)
        return messages, True, problems
    conversational = any(isinstance(record.get(k), list) for k in ("prompt", *answers))
    prompt, problems = _prompt(record, conversational)
    return prompt, conversational, problems


def check_preference(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    """prompt + chosen + rejected, in the TRL, LLaMA-Factory alpaca or LLaMA-Factory sharegpt shape."""
    chosen_field, rejected_field = _col(names, "chosen", "chosen"), _col(names, "rejected", "rejected")
    prompt, conversational, problems = _any_prompt(record, names, (chosen_field, rejected_field))
    chosen, p1 = _side(record, chosen_field, conversational, names)
    rejected, p2 = _side(record, rejected_field, conversational, names)
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
    return None, [f"{field} must be true or false (got {_show(value)})"]


def check_unpaired(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    """One answer judged alone (KTO's data): TRL's unpaired preference type (prompt + completion + label, true =
    desirable), or LLaMA-Factory's KTO shapes with `kto_tag` as the label: sharegpt (the conversation's last,
    assistant turn is the completion) or alpaca (instruction/input + output)."""
    if _has(record, names, "messages", "conversations"):  # LLaMA-Factory sharegpt
        label, problems = _label(record, _col(names, "kto_tag", "kto_tag"))
        messages, more = _sharegpt_messages(record, names, ends_with="assistant")
        problems += more
        prompt, completion = (messages[:-1], messages[-1:]) if messages else (None, None)
    elif names.prompt or "instruction" in record:  # LLaMA-Factory alpaca
        label, problems = _label(record, _col(names, "kto_tag", "kto_tag"))
        prompt, more = _alpaca_prompt(record, names)
        completion, more2 = _side(record, _col(names, "response", "output"), True, names)
        problems += more + more2
    else:  # TRL
        completion_field = _col(names, "response", "completion")
        conversational = any(isinstance(record.get(k), list) for k in ("prompt", completion_field))
        prompt, problems = _prompt(record, conversational)
        completion, more = _side(record, completion_field, conversational, names)
        label, more2 = _label(record, names.kto_tag or ("kto_tag" if "kto_tag" in record else "label"))
        problems += more + more2
    if problems:
        return None, problems
    return {"prompt": prompt, "completion": completion, "label": label}, []


def check_text(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    text, problems = _string(record, _col(names, "prompt", "text"))
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
        return None, [f"must be a JSON object (got {_type_name(record)})"]
    return CHECKERS[fmt](record, names)


def as_conversational(record: dict) -> dict:
    """A string-form prompt record (preference, ...) in message-list form (to mix with conversational ones):
    the prompt becomes a user message, every other string field an assistant message."""
    if isinstance(record["prompt"], list):
        return record
    return {key: ([{"role": "user" if key == "prompt" else "assistant", "content": value}]
                  if isinstance(value, str) else value) for key, value in record.items()}
