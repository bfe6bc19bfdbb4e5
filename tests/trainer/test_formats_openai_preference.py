"""OpenAI's preference (DPO) fine-tuning records: detection, normalisation to TRL's conversational preference
form, file:line: field errors, tools refused (not dropped).

The records are written by us in the shape OpenAI documents for preference fine-tuning (one JSON object a
line): {"input": {"messages", "tools", "parallel_tool_calls"}, "preferred_output": [one assistant message],
"non_preferred_output": [one assistant message]}.
"""

from __future__ import annotations

import json

import pytest

from kubetune_trainer import data, formats
from kubetune_trainer.errors import DataError
from tests.fixtures.tiny_data import FACTS, WRONG, preference_records, write_jsonl

# OpenAI's published example, character for character.
PUBLISHED = ('{"input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is '
             'today?"}], "tools": [], "parallel_tool_calls": true}, "preferred_output": [{"role": "assistant", '
             '"content": "Today in San Francisco, it is not quite cold as expected. Morning clouds will give away to '
             'sunny skies by noon, with highs in the 60s."}], "non_preferred_output": [{"role": "assistant", '
             '"content": "It is not particularly cold in San Francisco today."}]}')


def openai_records(n: int = 20) -> list[dict]:
    """The tiny model's FACTS as OpenAI preference records (chosen = the fact, rejected = a wrong answer)."""
    return [{"input": {"messages": [{"role": "user", "content": q}], "tools": [], "parallel_tool_calls": True},
             "preferred_output": [{"role": "assistant", "content": a}],
             "non_preferred_output": [{"role": "assistant", "content": WRONG[q]}]}
            for q, a in (FACTS[i % len(FACTS)] for i in range(n))]


def good(**changes) -> dict:
    record = openai_records(1)[0]
    record.update(changes)
    return record


def test_published_example_is_detected_and_normalised():
    record = json.loads(PUBLISHED)
    assert formats.detect(record) == "preference"
    assert formats.check_record("preference", record) == ({
        "prompt": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
        "chosen": [{"role": "assistant", "content": "Today in San Francisco, it is not quite cold as expected. Morning "
                    "clouds will give away to sunny skies by noon, with highs in the 60s."}],
        "rejected": [{"role": "assistant", "content": "It is not particularly cold in San Francisco today."}]}, [])


def test_same_records_as_trls_conversational_shape():
    """The normalised records are exactly those of TRL's conversational preference shape (which the DPO, ORPO and
    KTO training tests train on)."""
    ours = [formats.check_record("preference", r) for r in openai_records(20)]
    trl = [formats.check_record("preference", r) for r in preference_records(20)]
    assert ours == trl and all(not problems for _, problems in ours)


def test_multi_turn_input_with_system_and_no_tools_fields():
    record = {"input": {"messages": [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                     {"role": "user", "content": "Sky colour?"}]},
              "preferred_output": [{"role": "assistant", "content": "Purple."}],
              "non_preferred_output": [{"role": "assistant", "content": "Green."}]}
    normalised, problems = formats.check_record("preference", record)
    assert problems == []
    assert normalised["prompt"] == record["input"]["messages"]
    assert (normalised["chosen"], normalised["rejected"]) == (record["preferred_output"], record["non_preferred_output"])


@pytest.mark.parametrize(("record", "expected"), [
    ({"input": {"messages": []}}, "preference"),  # no outputs yet: still this shape (its errors say what is missing)
    ({"preferred_output": []}, "preference"),
    ({"non_preferred_output": []}, "preference"),
    ({"input": "context", "output": "o"}, "alpaca"),  # LLaMA-Factory's input is text: still alpaca
    ({"instruction": "i", "input": "", "chosen": "a", "rejected": "b"}, "preference"),
])
def test_detect(record, expected):
    assert formats.detect(record) == expected


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
REFUSED = formats.NO_TOOLS_IN_PREFERENCE
USER = [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(("changes", "problems"), [
    ({"non_preferred_output": None}, ['missing field "non_preferred_output"']),
    ({"preferred_output": None, "non_preferred_output": None},
     ['missing field "preferred_output"', 'missing field "non_preferred_output"']),
    ({"preferred_output": [{"role": "user", "content": "a"}]},
     ["preferred_output[0].role must be assistant (got 'user'): the input holds the rest"]),
    ({"preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
     ["preferred_output must be a list holding exactly one assistant message (got 2 messages)"]),
    ({"non_preferred_output": []},
     ["non_preferred_output must be a list holding exactly one assistant message (got 0 messages)"]),
    ({"non_preferred_output": "Green."},
     ["non_preferred_output must be a list holding exactly one assistant message (got string)"]),
    ({"non_preferred_output": {"role": "assistant", "content": "Green."}},
     ["non_preferred_output must be a list holding exactly one assistant message (got object)"]),
    ({"preferred_output": ["Purple."]}, ["preferred_output[0] must be an object with role and content (got string)"]),
    ({"preferred_output": [{"role": "assistant", "content": " "}]}, ["preferred_output[0].content must not be empty"]),
    ({"preferred_output": [{"role": "assistant"}]}, ["preferred_output[0].content is missing"]),
    ({"input": None}, ['missing field "input"']),
    ({"input": "q"}, ["input must be an object with messages (got string)"]),
    ({"input": {"tools": []}}, ['missing field "input.messages"']),
    ({"input": {"messages": "q"}}, ["input.messages must be a list of messages (got string)"]),
    ({"input": {"messages": []}}, ["input.messages must not be empty"]),
    ({"input": {"messages": [*USER, {"role": "assistant", "content": "a"}]}},
     ["input.messages must end with a user message (got assistant): the outputs answer it"]),
    ({"input": {"messages": [{"role": "system", "content": "Be brief."}]}},
     ["input.messages must end with a user message (got system): the outputs answer it"]),
    ({"input": {"messages": [*USER, {"role": "robot", "content": "x"}]}},
     ["input.messages[1].role must be one of system,user,assistant (got 'robot')"]),
    ({"input": {"messages": USER, "tools": TOOLS}}, [f"input.tools: {REFUSED}"]),
    ({"input": {"messages": [*USER, CALL, {"role": "tool", "tool_call_id": "c1", "content": "9C"}, *USER],
                "tools": TOOLS}},
     [f"input.tools: {REFUSED}",
      f"input.messages[1]: tool calls and tool messages are not accepted in preference data: {REFUSED}",
      f"input.messages[2]: tool calls and tool messages are not accepted in preference data: {REFUSED}"]),
    ({"preferred_output": [CALL]},
     [f"preferred_output[0]: tool calls and tool messages are not accepted in preference data: {REFUSED}"]),
    ({"chosen": [{"role": "assistant", "content": "a"}]},
     ["chosen: TRL's fields beside OpenAI's input/preferred_output/non_preferred_output (use one shape per record)"]),
])
def test_problems(changes, problems):
    record = {k: v for k, v in good(**changes).items() if v is not None}
    assert formats.check_record("preference", record) == (None, problems)


def test_tools_message_says_why_and_what_to_do():
    assert "renders role/content messages only" in REFUSED and "supervised (chatml) data" in REFUSED


def test_file_problems_name_file_line_and_field(tmp_path):
    records = openai_records(20)
    del records[2]["non_preferred_output"]
    records[6]["preferred_output"].append({"role": "assistant", "content": "more"})
    records[9]["input"]["messages"].append({"role": "assistant", "content": "a"})
    records[12]["input"]["tools"] = TOOLS
    with pytest.raises(DataError) as info:
        data.load([write_jsonl(tmp_path / "pairs.jsonl", records)], fmt="auto", method="dpo")
    assert info.value.summary == "train data is invalid: 4 of 20 records in pairs.jsonl have problems (format preference)"
    assert info.value.problems == [
        'pairs.jsonl:3: missing field "non_preferred_output"',
        "pairs.jsonl:7: preferred_output must be a list holding exactly one assistant message (got 2 messages)",
        "pairs.jsonl:10: input.messages must end with a user message (got assistant): the outputs answer it",
        f"pairs.jsonl:13: input.tools: {REFUSED}"]


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_file_loads_for_every_preference_method(tmp_path, method):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in openai_records(20)) + PUBLISHED + "\n")
    loaded = data.load([path], fmt="auto", method=method)
    assert (loaded.format, len(loaded.records), loaded.conversational) == ("preference", 21, True)
    assert loaded.records[0] == formats.check_record("preference", preference_records(1)[0])[0]


def test_supervised_method_names_the_format_it_needs(tmp_path):
    with pytest.raises(DataError) as info:
        data.load([write_jsonl(tmp_path / "pairs.jsonl", openai_records(20))], fmt="auto", method="sft")
    assert str(info.value) == (
        "pairs.jsonl: method sft cannot train on preference data (it needs chatml, alpaca, sharegpt, text)")
