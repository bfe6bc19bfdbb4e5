"""LLaMA-Factory's record shapes (its data/README.md), checked and normalised. Pure functions; called by
kubetune_trainer.formats, which detects the format and dispatches. Problems name the field under the data's own
name (dataset.columns / dataset.tags: fields.Names).

- check_alpaca(record, names)    instruction, input, output, system, history           -> {"messages"}
- check_sharegpt(record, names)  conversations: [{from, value}], system, tools          -> {"messages"[, "tools"]}
  Tool turns (`function_call`: the assistant's call as JSON {"name", "arguments"}, or a list of them;
  `observation`: the tool's answer) and `tools` (a JSON string or a list of function definitions) map onto
  OpenAI's form through openai_chat.check_sharegpt_tools, so they train exactly like OpenAI tool records
  (kubetune_trainer.chat renders and masks them).
- For formats' preference and unpaired (KTO) shapes: sharegpt_messages (a conversation ending with the prompt or
  the answer, no tool turns), alpaca_prompt (system + history + instruction/input), sharegpt_answer (a
  {"from": "gpt", "value"} answer object) and no_tools (a tools field the shape cannot use is refused, not
  dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import openai_chat
from .fields import DEFAULT_NAMES, Names, Result, objects, show, string, type_name

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TOOL_TURNS = ("function_call", "observation")
# LLaMA-Factory's alternation: user-side turns (odd positions) and assistant-side turns (even positions).
SIDE = {"user": "user", "observation": "user", "assistant": "assistant", "function_call": "assistant"}
NO_TOOLS = (None, "", "[]", [])  # a tools field holding no tools


# ---------------------------------------------------------------------------------------------- sharegpt


@dataclass(frozen=True)
class Tags:
    """The message keys and role values of sharegpt-shaped data (dataset.tags over sharegpt's own)."""

    role: str
    content: str
    roles: dict[str, str]  # role value -> system/user/assistant/function_call/observation
    user: str  # for messages: the names of each turn kind as the data spells them
    assistant: str
    function: str
    observation: str

    def side(self, side: str, tooled: bool, quote: bool = True) -> str:
        """How a problem names the turns of one side: 'gpt', or 'gpt' or 'function_call' in a tool conversation."""
        names = (self.user, self.observation) if side == "user" else (self.assistant, self.function)
        return " or ".join(repr(n) if quote else n for n in (names if tooled else names[:1]))


def tags(names: Names) -> Tags:
    role, content = names.role_tag or "from", names.content_tag or "value"
    user, assistant, system = names.user_tag or "human", names.assistant_tag or "gpt", names.system_tag or "system"
    function, observation = names.function_tag or "function_call", names.observation_tag or "observation"
    if any((names.user_tag, names.assistant_tag, names.system_tag)):  # the data's own role names, only those
        roles = {user: "user", assistant: "assistant", system: "system"}
    else:  # sharegpt's (and the role/content names many exports use)
        roles = dict(SHAREGPT_ROLES)
    roles |= {function: "function_call", observation: "observation"}
    return Tags(role, content, roles, user, assistant, function, observation)


def _turns(value: Any, field: str, names: Names, *, ends_with: str, tools: bool) -> tuple[list | None, list[str]]:
    """A sharegpt conversation -> [{"role", "content"}] (roles as Tags.roles maps them), by LLaMA-Factory's rules:
    an optional system message first, then user-side turns (human, observation) and assistant-side turns (gpt,
    function_call) alternating, starting with the user's, ending on the side `ends_with` ("assistant": the answer
    to learn; "user": the prompt of a preference pair). Tool turns only where `tools` (SFT)."""
    t = tags(names)
    if not isinstance(value, list):
        return None, [f"{field} must be a list of messages (got {type_name(value)})"]
    if not value:
        return None, [f"{field} must not be empty"]
    kinds = [t.roles.get(m.get(t.role)) if isinstance(m, dict) and isinstance(m.get(t.role), str) else None for m in value]
    tooled = tools and any(k in TOOL_TURNS for k in kinds)
    start = 1 if kinds[0] == "system" else 0
    problems: list[str] = []
    out: list[dict[str, str]] = []
    for i, where, message in objects(value, field, problems, f"{t.role} and {t.content}"):
        kind = kinds[i]
        role, content = message.get(t.role), message.get(t.content)
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role is None:
            problems.append(f"{where}.{t.role} is missing")
        elif kind is None:
            allowed = [r for r, k in t.roles.items() if tools or k not in TOOL_TURNS]
            problems.append(f"{where}.{t.role} must be one of {','.join(allowed)} (got {show(role)})")
        elif kind in TOOL_TURNS and not tools:
            problems.append(f"{where}.{t.role}: {role!r} (a tool turn) is read in sharegpt SFT data only, not in "
                            "preference or KTO data")
        elif kind == "system" and i != 0:
            problems.append(f"{where}.{t.role}: a system message is only allowed first")
        elif kind != "system" and SIDE[kind] != expected and not any("turns alternate" in p for p in problems):
            problems.append(f"{where}.{t.role} must be {t.side(expected, tooled)} here (got {role!r}): turns "
                            f"alternate {t.side('user', tooled, False)}, {t.side('assistant', tooled, False)}, ... starting "
                            f"with {t.user}")
        if content is None:
            problems.append(f"{where}.{t.content} is missing")
        elif not isinstance(content, str):
            problems.append(f"{where}.{t.content} must be a string (got {type_name(content)})")
        elif not content.strip() and kind != "system":
            problems.append(f"{where}.{t.content} must not be empty")
        if not problems:
            out.append({"role": kind, "content": content})
    if problems:
        return None, problems
    if len(out) == start or SIDE[out[-1]["role"]] != ends_with:
        why = "the answer to learn" if ends_with == "assistant" else "the prompt that chosen and rejected answer"
        return None, [f"{field} must end with a {t.side(ends_with, tooled)} turn ({why})"]
    return out, []


def no_tools(record: dict, names: Names, shape: str) -> list[str]:
    """A tools field is not dropped without a word where the shape cannot use it."""
    field = names.col("tools", "tools")
    if record.get(field) in NO_TOOLS:
        return []
    return [f"{field}: tool descriptions are read in sharegpt SFT data (function_call / observation turns) and in "
            f"chatml (OpenAI) data, not in {shape} data (docs/data.md)"]


def _with_system(messages: list[dict], record: dict, names: Names) -> tuple[list | None, list[str]]:
    """The system column as the first message, unless the conversation starts with one (LLaMA-Factory: the
    system message overrides the column)."""
    system, problems = string(record, names.col("system", "system"), required=False, allow_empty=True)
    if problems:
        return None, problems
    if system and system.strip() and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages], []
    return messages, []


def sharegpt_messages(record: dict, names: Names, *, ends_with: str, shape: str) -> tuple[list | None, list[str]]:
    """The messages of a sharegpt-shaped preference or KTO record (`shape` names it): no tool turns, no tools."""
    field = names.col("messages", "conversations")
    if field not in record:
        return None, [f'missing field "{field}"']
    messages, problems = _turns(record[field], field, names, ends_with=ends_with, tools=False)
    problems += no_tools(record, names, shape)
    if problems:
        return None, problems
    return _with_system(messages, record, names)  # type: ignore[arg-type]


def check_sharegpt(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    """A sharegpt SFT record, with or without tool turns and tools."""
    field, tools_field = names.col("messages", "conversations"), names.col("tools", "tools")
    if field not in record:
        return None, [f'missing field "{field}"']
    messages, problems = _turns(record[field], field, names, ends_with="assistant", tools=True)
    if problems:
        return None, problems
    if record.get(tools_field) not in NO_TOOLS or any(m["role"] in TOOL_TURNS for m in messages):  # type: ignore[union-attr]
        t = tags(names)
        normalised, problems = openai_chat.check_sharegpt_tools(
            record, field=field, role_key=t.role, content_key=t.content, roles=t.roles, tools_field=tools_field)
        if problems:
            return None, problems
        messages = normalised["messages"]  # type: ignore[index]
        tools = normalised.get("tools")  # type: ignore[union-attr]
    else:
        tools = None
    messages, problems = _with_system(messages, record, names)  # type: ignore[arg-type]
    if problems:
        return None, problems
    return {"messages": messages, **({"tools": tools} if tools is not None else {})}, []


def sharegpt_answer(value: dict, field: str, names: Names) -> tuple[list | None, list[str]]:
    """A preference answer as one sharegpt message object ({"from": "gpt", "value": "..."}) -> [assistant message]."""
    t = tags(names)
    role, content = value.get(t.role), value.get(t.content)
    if not isinstance(role, str) or t.roles.get(role) != "assistant":
        return None, [f"{field}.{t.role} must be {t.assistant!r} (got {show(role)})"]
    if not isinstance(content, str) or not content.strip():
        return None, [f"{field}.{t.content} must be a non-empty string (got {show(content)})"]
    return [{"role": "assistant", "content": content}], []


# ------------------------------------------------------------------------------------------------ alpaca


def _history(record: dict, names: Names) -> tuple[list, list[str]]:
    """history: [[user, assistant], ...], the turns before the instruction (LLaMA-Factory alpaca)."""
    field = names.col("history", "history")
    value = record.get(field)
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [f"{field} must be a list of [user, assistant] pairs (got {type_name(value)})"]
    out, problems = [], []
    for i, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            problems.append(f"{field}[{i}] must be a [user, assistant] pair of strings (got {show(pair)})")
        elif not (pair[0].strip() and pair[1].strip()):
            problems.append(f"{field}[{i}] must not hold an empty turn")
        else:
            out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out, problems


def alpaca_prompt(record: dict, names: Names, shape: str = "alpaca") -> tuple[list | None, list[str]]:
    """system + history + the user turn (instruction, a newline, input), as LLaMA-Factory builds it."""
    instruction, problems = string(record, names.col("prompt", "instruction"))
    extra, p1 = string(record, names.col("query", "input"), required=False, allow_empty=True)
    system, p2 = string(record, names.col("system", "system"), required=False, allow_empty=True)
    history, p3 = _history(record, names)
    problems += p1 + p2 + p3 + no_tools(record, names, shape)
    if problems:
        return None, problems
    user = instruction + (f"\n{extra}" if extra and extra.strip() else "")  # type: ignore[operator]
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + history + [
        {"role": "user", "content": user}], []


def check_alpaca(record: dict, names: Names = DEFAULT_NAMES) -> Result:
    prompt, problems = alpaca_prompt(record, names)
    output, more = string(record, names.col("response", "output"))
    problems += more
    if problems:
        return None, problems
    return {"messages": [*prompt, {"role": "assistant", "content": output}]}, []  # type: ignore[misc]
