"""Training files for the gateway tests (OpenAI's chat and preference formats)."""

from __future__ import annotations

import json


def chat_lines(n: int = 12) -> list[str]:
    return [json.dumps({"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                                     {"role": "assistant", "content": f"{i + 1}"}]}) for i in range(n)]


def chat_file(n: int = 12) -> bytes:
    return ("\n".join(chat_lines(n)) + "\n").encode()


def preference_file(n: int = 12) -> bytes:
    # TRL's preference shape (OpenAI's own input/preferred_output/non_preferred_output: test_units.py).
    lines = [json.dumps({"prompt": [{"role": "user", "content": f"Say {i}"}],
                         "chosen": [{"role": "assistant", "content": f"{i}"}],
                         "rejected": [{"role": "assistant", "content": "no"}]}) for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def bad_chat_file() -> bytes:
    lines = chat_lines(6)
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]})
    lines[4] = '{"messages": [oops'
    return ("\n".join(lines) + "\n").encode()
