"""OpenAI's chat fine-tuning records, tools included, checked and normalised. Pure functions.

The shape (OpenAI's documented chat fine-tuning format, as publicly documented; written from that
shape, not fetched):

    {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": str, ...}, ...],
     "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],   # optional
     "parallel_tool_calls": bool}                                                           # optional

- an assistant message may call tools: `"tool_calls": [{"id", "type": "function", "function":
  {"name", "arguments": "<JSON object as a string>"}}]` (then `content` may be null or absent);
- a `tool` message answers one call: `{"role": "tool", "tool_call_id": <the call's id>, "content": str}`;
- an assistant message may carry `"weight": 0` (shown to the model, not learned) or `1` (the default).

LLaMA-Factory's sharegpt tool shape (`function_call` / `observation` turns, `tools` as a JSON string)
maps onto the same form through `check_sharegpt_tools`.

Normalised form (what kubetune_trainer.chat renders): `{"messages": [...], "tools": [...]}` where a
message is `{"role", "content": str}` plus, where they apply, `tool_calls` (arguments parsed into an
object: chat templates render them with `tojson`), `tool_call_id` and `name` (the called function) on
tool messages, and `"weight": 0`. A record without tools, calls or weights normalises to exactly the
plain `{"messages": [{"role", "content"}]}` of the other chat formats.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .fields import objects, type_name

Result = tuple[dict[str, Any] | None, list[str]]

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_TOOL_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                       "assistant": "assistant", "function_call": "function_call", "observation": "observation"}
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
TOOL_KEYS = ("tools", "tool_calls", "tool_call_id", "weight")  # any of these: rendered by kubetune_trainer.chat


def uses_tools(record: dict, field: str = "messages") -> bool:
    """Whether a chat record uses anything beyond role/content: tools, calls, tool answers, weights."""
    if record.get("tools") is not None or "parallel_tool_calls" in record:
        return True
    messages = record.get(field)
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") in ("tool", "function") or any(k in m for k in (*TOOL_KEYS, "function_call")))
        for m in messages)


def _json(value: Any, where: str, expect: type) -> tuple[Any, list[str]]:
    """A value that may arrive as JSON text (OpenAI's arguments, LLaMA-Factory's tools) -> the parsed value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, [f"{where} is not valid JSON: {exc.msg} (column {exc.colno})"]
    if not isinstance(value, expect):
        return None, [f"{where} must be a JSON {'object' if expect is dict else 'array'} (got {type_name(value)})"]
    return value, []


def served_form(function: dict) -> dict:
    """A function definition as vLLM hands a request's tools to the chat template (its FunctionDefinition dumped:
    name, description and parameters always, null when absent; strict only when set; other keys dropped), so the
    model trains on the very text it is served with."""
    out = {"name": function.get("name"), "description": function.get("description"),
           "parameters": function.get("parameters")}
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return {"type": "function", "function": out}


def check_tools(value: Any, field: str = "tools") -> tuple[list[dict] | None, list[str]]:
    """Function definitions -> [{"type": "function", "function": {"name", "description", "parameters"}}] in
    served_form. A bare {"name", ...} (LLaMA-Factory) is wrapped; a JSON string is parsed."""
    tools, problems = _json(value, field, list)
    if problems:
        return None, problems
    out, names = [], []
    for _, where, tool in objects(tools, field, problems):
        if "function" in tool or "type" in tool:
            if tool.get("type") != "function":
                problems.append(f"{where}.type must be \"function\" (got {tool.get('type')!r})")
                continue
            function, where = tool.get("function"), f"{where}.function"
        else:
            function = tool
        if not isinstance(function, dict):
            problems.append(f"{where} must be an object with name, description, parameters (got {type_name(function)})")
            continue
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            problems.append(f"{where}.name must be 1-64 letters, digits, _ or - (got {name!r})")
        elif name in names:
            problems.append(f"{where}.name {name!r} is defined twice")
        names.append(name)
        if "description" in function and not isinstance(function["description"], str):
            problems.append(f"{where}.description must be a string (got {type_name(function['description'])})")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            problems.append(f"{where}.parameters must be a JSON Schema object (got {type_name(function['parameters'])})")
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            problems.append(f"{where}.strict must be true or false (got {function['strict']!r})")
        out.append(served_form(function))
    return (None, problems) if problems else (out, [])


def _check_arguments(arguments: dict, function: dict | None, where: str) -> list[str]:
    """The parts of JSON Schema a call's arguments break most often: required and (when closed) unknown names."""
    schema = (function or {}).get("parameters") or {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else None
    problems = [f"{where} lacks required argument {name!r}" for name in schema.get("required") or []
                if isinstance(name, str) and name not in arguments]
    if properties is not None and schema.get("additionalProperties") is False:
        problems += [f"{where} has argument {name!r}, which {function['name']} does not define" for name in arguments
                     if name not in properties]
    return problems


def check_tool_calls(value: Any, where: str, tools: dict[str, dict] | None) -> tuple[list[dict] | None, list[str]]:
    """An assistant's tool_calls (OpenAI shape) -> [{"id"?, "type", "function": {"name", "arguments": object}}]."""
    if not isinstance(value, list) or not value:
        return None, [f"{where} must be a non-empty list of calls (got {type_name(value)})"]
    out, problems = [], []
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            problems.append(f"{at} must be an object {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
            continue
        if call.get("type", "function") != "function":
            problems.append(f"{at}.type must be \"function\" (got {call.get('type')!r})")
        if "id" in call and (not isinstance(call["id"], str) or not call["id"]):
            problems.append(f"{at}.id must be a non-empty string")
        name = call["function"].get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{at}.function.name must be a non-empty string")
        elif tools is not None and name not in tools:
            problems.append(f"{at}.function.name {name!r} is not one of the record's tools ({', '.join(tools) or 'none'})")
        arguments, more = _json(call["function"].get("arguments", {}), f"{at}.function.arguments", dict)
        problems += more or _check_arguments(arguments, (tools or {}).get(name), f"{at}.function.arguments")
        if not problems:
            out.append({**({"id": call["id"]} if "id" in call else {}), "type": "function",
                        "function": {"name": name, "arguments": arguments}})
    return (None, problems) if problems else (out, [])


def _content(message: dict, role: str, where: str, calls: bool) -> tuple[str | None, list[str]]:
    content = message.get("content")
    if content is None:
        return ("", []) if calls else (None, [f"{where}.content is missing"])
    if isinstance(content, list):
        return None, [f"{where}.content: content parts (a list) are not supported for training; give the text as a string"]
    if not isinstance(content, str):
        return None, [f"{where}.content must be a string (got {type_name(content)})"]
    if not content.strip() and role in ("user", "assistant") and not calls:
        return None, [f"{where}.content must not be empty"]
    return content, []


def _weight(message: dict, role: str, where: str) -> tuple[int, list[str]]:
    if "weight" not in message:
        return 1, []
    weight = message["weight"]
    if role != "assistant":
        return 1, [f"{where}.weight: only assistant messages have a weight (this is a {role} message)"]
    if isinstance(weight, bool) or weight not in (0, 1):
        return 1, [f"{where}.weight must be 0 (not learned) or 1 (learned) (got {weight!r})"]
    return int(weight), []


def check_chat(record: dict, *, field: str = "messages", keys: tuple[str, str] = ("role", "content")) -> Result:
    """An OpenAI chat record (record[field] = messages with role/content, optional tools) -> normalised.
    `keys` only names the role/content fields in messages (LLaMA-Factory's are from/value)."""
    problems: list[str] = []
    tools = None
    if record.get("tools") is not None:
        tools, problems = check_tools(record["tools"])
    by_name = {t["function"]["name"]: t["function"] for t in tools} if tools is not None else None
    parallel = record.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        problems.append(f"parallel_tool_calls must be true or false (got {parallel!r})")
    value = record.get(field)
    if not isinstance(value, list) or not value:
        return None, problems + [f"{field} must be a non-empty list of messages (got {type_name(value)})"]
    out: list[dict] = []
    pending: dict[str, Any] | None = None  # the open tool calls: {"at", "ids", "left"}
    for i, where, message in objects(value, field, problems, f"{keys[0]} and {keys[1]}"):
        role = message.get("role")
        if role not in ROLES:
            hint = " (the legacy function role: use tool_calls and tool messages)" if role == "function" else ""
            problems.append(f"{where}.{keys[0]} must be one of {','.join(ROLES)} (got {role!r}){hint}")
            continue
        if role != "tool":
            if pending and pending.get("left"):
                problems.append(f"{where}: the calls of {pending['at']} are not all answered by tool messages before it")
            pending = None
        if role == "system" and i != 0:
            problems.append(f"{where}.{keys[0]}: a system message is only allowed first")
        if "function_call" in message:
            problems.append(f"{where}.function_call is OpenAI's legacy form: use tool_calls")
        if "name" in message and not isinstance(message["name"], str):
            problems.append(f"{where}.name must be a string (got {type_name(message['name'])})")
        calls = None
        if message.get("tool_calls") is not None:
            if role != "assistant":
                problems.append(f"{where}.tool_calls: only assistant messages call tools (this is a {role} message)")
            elif by_name is None and record.get("tools") is not None:
                pending = {"at": where}  # the tools are wrong: said once, at the tools
            elif by_name is None:
                problems.append(f"{where}.tool_calls: the record has no \"tools\" (the functions the model may call)")
                pending = {"at": where}
            else:
                calls, more = check_tool_calls(message["tool_calls"], f"{where}.tool_calls", by_name)
                problems += more
                pending = {"at": where} if more else pending
                if calls and len(calls) > 1 and parallel is False:
                    problems.append(f"{where}.tool_calls has {len(calls)} calls but parallel_tool_calls is false")
        content, more = _content(message, role, where, calls is not None or "tool_calls" in message)
        weight, more2 = _weight(message, role, where)
        problems += more + more2
        normalised: dict[str, Any] = {"role": role, "content": content}
        if role == "tool":
            call_id = message.get("tool_call_id")
            if pending is not None and "left" not in pending:
                pass  # the calls it answers are wrong: said once, at the calls
            elif pending is None:
                problems.append(f"{where}: a tool message must follow an assistant message with tool_calls")
            elif call_id is not None and (not isinstance(call_id, str) or call_id not in pending["ids"]):
                problems.append(f"{where}.tool_call_id {call_id!r} answers no call of {pending['at']} "
                                f"(ids: {', '.join(pending['ids']) or 'none'})")
            elif call_id is None and pending["ids"]:
                problems.append(f"{where}.tool_call_id is missing (the calls of {pending['at']} have ids)")
            elif not pending["left"] or (call_id is not None and call_id not in pending["left"]):
                problems.append(f"{where}: {'the call ' + repr(call_id) if call_id else 'every call'} of {pending['at']} "
                                f"is already answered")
            else:
                answered = pending["left"].pop(pending["left"].index(call_id) if call_id else 0)
                normalised |= {"tool_call_id": call_id} if call_id else {}
                normalised["name"] = pending["names"][answered]
            if pending is not None and "left" in pending and "name" not in normalised:
                pending = {"at": pending["at"]}  # one wrong answer is reported, not every message after it
        if calls:
            ids = [c["id"] for c in calls if "id" in c]
            if len(set(ids)) != len(ids):
                problems.append(f"{where}.tool_calls: call ids must be unique")
            normalised["tool_calls"] = calls
            keyed = {c.get("id", n): c["function"]["name"] for n, c in enumerate(calls)}
            pending = {"at": where, "ids": ids, "left": list(keyed), "names": keyed}
        if weight == 0:
            normalised["weight"] = 0
        out.append(normalised)
    if not problems and not any(m["role"] == "assistant" and m.get("weight", 1) for m in out):
        problems.append(f"{field} has no assistant message with weight 1 (nothing to learn from)")
    if problems:
        return None, problems
    return ({"messages": out, "tools": tools} if tools is not None else {"messages": out}), []


def _sharegpt_call(value: Any, where: str) -> tuple[list[dict] | None, list[str]]:
    """A function_call turn's value: {"name", "arguments"} or a list of them, as JSON text -> OpenAI tool_calls."""
    calls = value
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except json.JSONDecodeError as exc:
            return None, [f"{where} is not valid JSON: {exc.msg} (column {exc.colno})"]
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not calls or not all(isinstance(c, dict) and "name" in c for c in calls):
        return None, [f'{where} must be a JSON object {{"name", "arguments"}} or a list of them']
    return [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls], []


def check_sharegpt_tools(record: dict, *, field: str = "conversations", role_key: str = "from",
                         content_key: str = "value", roles: dict[str, str] | None = None,
                         tools_field: str = "tools") -> Result:
    """LLaMA-Factory's sharegpt tool shape -> the normalised form of check_chat.

    record[field] holds turns {role_key, content_key}; `roles` maps the data's role values to system, user,
    assistant, function_call (the assistant's calls: the value is JSON {"name", "arguments"} or a list of
    them) and observation (a tool's answer); default SHAREGPT_TOOL_ROLES (dataset.tags give others).
    record[tools_field] holds the function definitions (a JSON string or a list; bare {"name", ...} or
    OpenAI's {"type": "function", "function": {...}}). kubetune_trainer.llamafactory.check_sharegpt calls it for a
    record with tools or tool turns, after checking LLaMA-Factory's turn order, and prepends the system column."""
    roles = roles or SHAREGPT_TOOL_ROLES
    turns = record.get(field)
    if not isinstance(turns, list) or not turns:
        return None, [f"{field} must be a non-empty list of messages (got {type_name(turns)})"]
    messages, problems = [], []
    for _, where, turn in objects(turns, field, problems, f"{role_key} and {content_key}"):
        kind = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if kind is None:
            problems.append(f"{where}.{role_key} must be one of {','.join(roles)} (got {turn.get(role_key)!r})")
        elif kind == "function_call":
            calls, more = _sharegpt_call(turn.get(content_key), f"{where}.{content_key}")
            problems += more
            messages.append({"role": "assistant", "content": None, "tool_calls": calls or []})
        else:
            messages.append({"role": "tool" if kind == "observation" else kind, "content": turn.get(content_key)})
    if problems:
        return None, problems
    tools = record.get(tools_field)
    converted = {"messages": messages, **({"tools": tools} if tools not in (None, "", "[]", []) else {})}
    normalised, problems = check_chat(converted, keys=(role_key, content_key))
    spelled = {kind: next((value for value, k in roles.items() if k == kind), kind) for kind in ("function_call", "observation")}
    return normalised, [_in_sharegpt_terms(p, field, role_key, content_key, tools_field, spelled) for p in problems]


def _in_sharegpt_terms(problem: str, field: str, role_key: str, content_key: str, tools_field: str,
                       spelled: dict[str, str]) -> str:
    """A check_chat problem about a converted sharegpt record, in the data's own fields and turn names."""
    call, answer = repr(spelled["function_call"]), repr(spelled["observation"])
    problem = re.sub(r"\.tool_calls\[(\d+)\]\.function\.", rf".{content_key} call \1: ", problem)
    for old, new in (("are not all answered by tool messages before it",
                      f"are not all answered by {answer} turns before it (one per call: several calls in one "
                      f"{call} turn cannot each be answered in this shape; write such a record in the chatml "
                      "(OpenAI) format)"),
                     ("a tool message must follow an assistant message with tool_calls",
                      f"this {answer} turn does not follow a {call} turn"),
                     (".tool_calls:", f".{content_key}:"), ("messages[", f"{field}["), ("messages has", f"{field} has"),
                     (".content", f".{content_key}"), (".role", f".{role_key}"), ("tools", tools_field)):
        problem = problem.replace(old, new)
    return problem
