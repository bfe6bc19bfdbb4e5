"""Dataset record formats: detection, per-record checks and normalisation. Pure functions.

Each checker takes one record (a dict) and returns (normalised record or None, problems). A problem
names the field like a JSON path: `messages[2].role must be one of system,user,assistant (got 'bot')`.

Normalised forms (what TRL consumes):
- chatml, alpaca, sharegpt -> {"messages": [{"role", "content"}, ...]}
- preference               -> {"prompt", "chosen", "rejected"} as strings, or as message lists
- unpaired                 -> {"prompt", "completion", "label": bool} as strings, or as message lists
- text                     -> {"text": str}
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_FORMATS = ("chatml", "alpaca", "sharegpt")  # normalised to {"messages"}
# Fields that hold nested JSON (a CSV cell then holds it as JSON text).
JSON_FIELDS = ("messages", "conversations", "prompt", "chosen", "rejected", "completion")

Result = tuple[dict[str, Any] | None, list[str]]


def detect(record: Any) -> str | None:
    """The format a record looks like (by its keys), or None."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "kto_tag" in keys or {"completion", "label"} <= keys:
        return "unpaired"
    if "messages" in keys:
        return "chatml"
    if "conversations" in keys:
        return "sharegpt"
    if keys & {"chosen", "rejected"}:
        return "preference"
    if "instruction" in keys or ("output" in keys and "input" in keys):
        return "alpaca"
    if "text" in keys:
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


def check_chatml(record: dict) -> Result:
    if "messages" not in record:
        return None, ['missing field "messages"']
    messages, problems = check_messages(record["messages"], "messages")
    return ({"messages": messages} if messages else None), problems


def check_sharegpt(record: dict) -> Result:
    if "conversations" not in record:
        return None, ['missing field "conversations"']
    messages, problems = check_messages(record["conversations"], "conversations", role_key="from",
                                        content_key="value", roles=SHAREGPT_ROLES)
    return ({"messages": messages} if messages else None), problems


def check_alpaca(record: dict) -> Result:
    instruction, p1 = _string(record, "instruction")
    extra, p2 = _string(record, "input", required=False, allow_empty=True)
    output, p3 = _string(record, "output")
    system, p4 = _string(record, "system", required=False, allow_empty=True)
    problems = p1 + p2 + p3 + p4
    if problems:
        return None, problems
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}, []


def _side(record: dict, field: str, conversational: bool) -> tuple[Any, list[str]]:
    if field not in record or record[field] is None:
        return None, [f'missing field "{field}"']
    value = record[field]
    if isinstance(value, str):
        if not value.strip():
            return None, [f"{field} must not be empty"]
        return ([{"role": "assistant", "content": value}] if conversational else value), []
    if isinstance(value, list):
        messages, problems = check_messages(value, field, need_assistant=False)
        if messages and any(m["role"] != "assistant" for m in messages):
            problems = [f"{field} must hold only assistant messages (the prompt holds the rest)"]
        return (messages if not problems else None), problems
    return None, [f"{field} must be a string or a list of messages (got {_type_name(value)})"]


def _prompt(record: dict, conversational: bool) -> tuple[Any, list[str]]:
    """The prompt of a prompt/answer record: a string, or messages ending with a user turn."""
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


def check_preference(record: dict) -> Result:
    """prompt (string or messages) + chosen + rejected. Lists anywhere make the record conversational."""
    conversational = any(isinstance(record.get(k), list) for k in ("prompt", "chosen", "rejected"))
    prompt, problems = _prompt(record, conversational)
    chosen, p1 = _side(record, "chosen", conversational)
    rejected, p2 = _side(record, "rejected", conversational)
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


def check_unpaired(record: dict) -> Result:
    """One answer judged alone (KTO's data): prompt + completion + label (true = desirable), as TRL's unpaired
    preference type; or LLaMA-Factory's KTO shape: sharegpt `conversations` whose last (assistant) turn is
    the completion, with `kto_tag` as the label."""
    if "conversations" in record:
        label, problems = _label(record, "kto_tag")
        messages, more = check_messages(record["conversations"], "conversations", role_key="from",
                                        content_key="value", roles=SHAREGPT_ROLES)
        problems += more
        if messages and (messages[-1]["role"] != "assistant" or len(messages) < 2 or messages[-2]["role"] != "user"):
            problems.append("conversations must end with a user turn and then the assistant turn being judged")
        if problems:
            return None, problems
        return {"prompt": messages[:-1], "completion": messages[-1:], "label": label}, []
    conversational = any(isinstance(record.get(k), list) for k in ("prompt", "completion"))
    prompt, problems = _prompt(record, conversational)
    completion, p1 = _side(record, "completion", conversational)
    label, p2 = _label(record, "label")
    problems += p1 + p2
    if problems:
        return None, problems
    return {"prompt": prompt, "completion": completion, "label": label}, []


def check_text(record: dict) -> Result:
    text, problems = _string(record, "text")
    return ({"text": text} if text is not None else None), problems


CHECKERS = {
    "chatml": check_chatml,
    "alpaca": check_alpaca,
    "sharegpt": check_sharegpt,
    "preference": check_preference,
    "unpaired": check_unpaired,
    "text": check_text,
}


def check_record(fmt: str, record: Any) -> Result:
    """Validate and normalise one record of format fmt."""
    if not isinstance(record, dict):
        return None, [f"must be a JSON object (got {_type_name(record)})"]
    return CHECKERS[fmt](record)


def as_conversational(record: dict) -> dict:
    """A string-form prompt record (preference, ...) in message-list form (to mix with conversational ones):
    the prompt becomes a user message, every other string field an assistant message."""
    if isinstance(record["prompt"], list):
        return record
    return {key: ([{"role": "user" if key == "prompt" else "assistant", "content": value}]
                  if isinstance(value, str) else value) for key, value in record.items()}
