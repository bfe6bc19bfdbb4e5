"""OpenAI's chat fine-tuning format in full (tools, tool_calls, tool messages, weights) and LLaMA-Factory's
sharegpt tool shape: validation naming file:line:field, one normalised form, and the loss mask of
kubetune_trainer.chat (rendered through the model's own chat template) against transformers' own
`{% generation %}` mask. Fast: tokenizer only, no training (test_tools_training.py trains)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from kubetune_trainer import chat, data, formats, openai_chat
from kubetune_trainer.errors import DataError, UserError

from tests.fixtures.tiny_data import UNLEARNED, WEATHER_TOOL, chat_records, tool_records, write_jsonl
from tests.fixtures.tiny_model import CHAT_TEMPLATE, TOOLS_CHAT_TEMPLATE, build_tokenizer

SERVED_TOOL = openai_chat.served_form(WEATHER_TOOL["function"])  # description: null, as vLLM renders it
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Blorp"}'}}


def record(*messages: dict, tools: list | None = None, **extra) -> dict:
    return {"messages": list(messages), **({"tools": tools} if tools is not None else {}), **extra}


USER = {"role": "user", "content": "What is the weather in Blorp?"}
CALLING = {"role": "assistant", "content": None, "tool_calls": [CALL]}
ANSWER = {"role": "tool", "tool_call_id": "c1", "content": "purple rain"}
FINAL = {"role": "assistant", "content": "It is purple rain in Blorp."}
GOOD = record(USER, CALLING, ANSWER, FINAL, tools=[WEATHER_TOOL])


# ------------------------------------------------------------------------------------------ formats


def test_openai_tool_record_normalises_calls_answers_and_weights() -> None:
    normalised, problems = formats.check_record("chatml", {**GOOD, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "weight": 0}, *GOOD["messages"][:-1], {**FINAL, "weight": 1}]})
    assert problems == []
    assert normalised == {"tools": [SERVED_TOOL], "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "weight": 0}, USER,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Blorp"}}}]},
        {"role": "tool", "content": "purple rain", "tool_call_id": "c1", "name": "get_weather"},
        {"role": "assistant", "content": "It is purple rain in Blorp."}]}


def test_plain_chat_records_keep_the_plain_form() -> None:
    plain = chat_records(1)[0]
    assert not openai_chat.uses_tools(plain)
    assert formats.check_record("chatml", plain) == (plain, [])
    # the full checker gives the same form for them (so a mixed dataset is one shape)
    assert openai_chat.check_chat(plain) == (plain, [])


def test_parallel_calls_each_answered_by_id_in_any_order() -> None:
    second = {**CALL, "id": "c2", "function": {"name": "get_weather", "arguments": {"city": "Quix"}}}
    normalised, problems = openai_chat.check_chat(record(
        USER, {"role": "assistant", "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "c2", "content": "green snow"}, ANSWER, FINAL, tools=[WEATHER_TOOL]))
    assert problems == []
    assert [m.get("tool_call_id") for m in normalised["messages"]] == [None, None, "c2", "c1", None]


def test_a_last_call_needs_no_answer() -> None:
    """A record may end with the call (teaching when and how to call)."""
    assert openai_chat.check_chat(record(USER, CALLING, tools=[WEATHER_TOOL]))[1] == []


def _broken(path: str, value) -> dict:
    """GOOD with one value replaced; path like 'messages.1.tool_calls.0.function.arguments' ('-' deletes)."""
    out = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value == "-":
        del node[key]
    else:
        node[key] = value
    return out


@pytest.mark.parametrize(("path", "value", "problem"), [
    ("messages.1.tool_calls.0.function.arguments", '{"city": Blorp}',
     "messages[1].tool_calls[0].function.arguments is not valid JSON: Expecting value (column 10)"),
    ("messages.1.tool_calls.0.function.arguments", "[1]",
     "messages[1].tool_calls[0].function.arguments must be a JSON object (got array)"),
    ("messages.1.tool_calls.0.function.arguments", "{}",
     "messages[1].tool_calls[0].function.arguments lacks required argument 'city'"),
    ("messages.1.tool_calls.0.function.name", "get_wether",
     "messages[1].tool_calls[0].function.name 'get_wether' is not one of the record's tools (get_weather)"),
    ("messages.1.tool_calls.0.type", "code", 'messages[1].tool_calls[0].type must be "function" (got \'code\')'),
    ("messages.1.tool_calls", [], "messages[1].tool_calls must be a non-empty list of calls (got array)"),
    ("tools", "-", 'messages[1].tool_calls: the record has no "tools" (the functions the model may call)'),
    ("tools", "[{", "tools is not valid JSON: Expecting property name enclosed in double quotes (column 3)"),
    ("tools.0.function.name", "get weather", "tools[0].function.name must be 1-64 letters, digits, _ or - (got 'get weather')"),
    ("tools.0.function.parameters", "city", "tools[0].function.parameters must be a JSON Schema object (got string)"),
    ("messages.2.tool_call_id", "c9", "messages[2].tool_call_id 'c9' answers no call of messages[1] (ids: c1)"),
    ("messages.2.tool_call_id", "-", "messages[2].tool_call_id is missing (the calls of messages[1] have ids)"),
    ("messages.2", {"role": "user", "content": "And?"},
     "messages[2]: the calls of messages[1] are not all answered by tool messages before it"),
    ("messages.0", {"role": "tool", "content": "x"}, "messages[0]: a tool message must follow an assistant message with tool_calls"),
    ("messages.3.weight", 2, "messages[3].weight must be 0 (not learned) or 1 (learned) (got 2)"),
    ("messages.3.weight", True, "messages[3].weight must be 0 (not learned) or 1 (learned) (got True)"),
    ("messages.0.weight", 0, "messages[0].weight: only assistant messages have a weight (this is a user message)"),
    ("messages.3.content", [{"type": "text", "text": "x"}],
     "messages[3].content: content parts (a list) are not supported for training; give the text as a string"),
    ("messages.3.content", "-", "messages[3].content is missing"),
    ("messages.3.role", "function", "messages[3].role must be one of system,user,assistant,tool (got 'function') "
                                    "(the legacy function role: use tool_calls and tool messages)"),
    ("messages.0.tool_calls", [CALL], "messages[0].tool_calls: only assistant messages call tools (this is a user message)"),
    ("parallel_tool_calls", "no", "parallel_tool_calls must be true or false (got 'no')"),
])
def test_each_bad_tool_record_names_the_field(path: str, value, problem: str) -> None:
    normalised, problems = formats.check_record("chatml", _broken(path, value))
    assert normalised is None and problems == [problem]


def test_every_assistant_turn_weighted_zero_leaves_nothing_to_learn() -> None:
    bad = record(USER, {**CALLING, "weight": 0}, ANSWER, {**FINAL, "weight": 0}, tools=[WEATHER_TOOL])
    assert formats.check_record("chatml", bad)[1] == ["messages has no assistant message with weight 1 (nothing to learn from)"]


def test_parallel_tool_calls_false_allows_one_call_per_message() -> None:
    two = record(USER, {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "c2"}]}, tools=[WEATHER_TOOL],
                 parallel_tool_calls=False)
    assert formats.check_record("chatml", two)[1] == ["messages[1].tool_calls has 2 calls but parallel_tool_calls is false"]


def test_closed_parameters_refuse_unknown_arguments() -> None:
    closed = copy.deepcopy(WEATHER_TOOL)
    closed["function"]["parameters"]["additionalProperties"] = False
    bad = _broken("messages.1.tool_calls.0.function.arguments", '{"city": "Blorp", "units": "K"}')
    bad["tools"] = [closed]
    assert formats.check_record("chatml", bad)[1] == [
        "messages[1].tool_calls[0].function.arguments has argument 'units', which get_weather does not define"]


def test_llamafactory_sharegpt_tools_give_the_same_form() -> None:
    """function_call / observation turns and tools as a JSON string of bare function definitions."""
    lf = {"conversations": [{"from": "human", "value": USER["content"]},
                            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Blorp"}})},
                            {"from": "observation", "value": "purple rain"},
                            {"from": "gpt", "value": FINAL["content"]}],
          "tools": json.dumps([WEATHER_TOOL["function"]])}
    normalised, problems = openai_chat.check_sharegpt_tools(lf)
    expected, _ = openai_chat.check_chat(GOOD)
    for message in expected["messages"]:  # LLaMA-Factory's calls carry no ids
        message.pop("tool_call_id", None)
        for call in message.get("tool_calls", []):
            call.pop("id")
    assert problems == [] and normalised == expected
    lf["conversations"][1]["value"] = "get_weather(city='Blorp')"
    assert openai_chat.check_sharegpt_tools(lf)[1] == [
        "conversations[1].value is not valid JSON: Expecting value (column 1)"]
    lf["conversations"][1]["value"] = json.dumps({"name": "get_wether", "arguments": {}})
    assert openai_chat.check_sharegpt_tools(lf)[1] == [
        "conversations[1].value call 0: name 'get_wether' is not one of the record's tools (get_weather)"]


def test_data_load_reports_file_line_and_field(tmp_path: Path) -> None:
    records = tool_records(12)
    records[4]["messages"][3]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    path = write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(DataError) as info:
        data.load([path], fmt="auto", method="sft")
    assert info.value.problems == [
        "train.jsonl:5: messages[3].tool_calls[0].function.arguments is not valid JSON: Expecting value (column 10)"]
    records[4] = tool_records(5)[4]
    loaded = data.load([write_jsonl(tmp_path / "ok.jsonl", records)], fmt="auto", method="sft")
    assert loaded.format == "chatml" and loaded.conversational and chat.needs_rendering(loaded.records)


# -------------------------------------------------------------------------------------- loss mask


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    tok.chat_template = TOOLS_CHAT_TEMPLATE
    return tok


def _normalised(records: list[dict]) -> list[dict]:
    out = [formats.check_record("chatml", r) for r in records]
    assert all(not problems for _, problems in out)
    return [r for r, _ in out]


def _learned_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])


def test_mask_equals_transformers_generation_mask(tokenizer) -> None:
    """On a template with {% generation %}, the prefix-rendered mask is transformers' own mask token for token."""
    records = _normalised([GOOD, record(USER, CALLING, tools=[WEATHER_TOOL]), chat_records(1)[0],
                           record({"role": "system", "content": "Be brief."}, *GOOD["messages"], tools=[WEATHER_TOOL])])
    for r in records:
        row = chat.tokenize(tokenizer, TOOLS_CHAT_TEMPLATE, r)
        own = tokenizer.apply_chat_template(r["messages"], tools=r.get("tools"), return_dict=True,
                                            return_assistant_tokens_mask=True)
        assert (row["input_ids"], row["assistant_masks"]) == (own["input_ids"], own["assistant_masks"])


def test_learned_tokens_are_exactly_the_assistant_turns_and_weight_zero_is_context(tokenizer) -> None:
    """Without {% generation %} markers too: the learned tokens decode to the calls and answers, nothing else."""
    plain = TOOLS_CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    r = _normalised(tool_records(1))[0]
    marked, unmarked = chat.tokenize(tokenizer, TOOLS_CHAT_TEMPLATE, r), chat.tokenize(tokenizer, plain, r)
    assert marked == unmarked
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Blorp"}}\n</tool_call><|im_end|>'
    assert _learned_text(tokenizer, marked) == call + "It is purple rain in Blorp.<|im_end|>"
    text = tokenizer.decode(marked["input_ids"])
    assert UNLEARNED[1] in text and "<tools>" in text and "purple rain\n</tool_response>" in text  # context kept
    # weight 1 on that turn: it is learned as well
    r["messages"][1].pop("weight")
    assert _learned_text(tokenizer, chat.tokenize(tokenizer, plain, r)).startswith(UNLEARNED[1] + "<|im_end|>")


def test_a_template_that_ignores_tools_is_refused(tokenizer) -> None:
    with pytest.raises(UserError, match="the chat template of m ignores tools"):
        chat.tokenize_all(tokenizer, _normalised([GOOD]), "m", template=CHAT_TEMPLATE)


def test_a_template_that_renders_a_turn_by_what_follows_is_refused(tokenizer) -> None:
    """Like Qwen3's: the last assistant turn rendered differently from earlier ones."""
    shifty = TOOLS_CHAT_TEMPLATE.replace("{% generation %}", "{% generation %}{% if loop.last %}<think></think>{% endif %}")
    with pytest.raises(UserError, match=r"example 1 of 1: the chat template renders messages\[1\] \(assistant\) differently"):
        chat.tokenize_all(tokenizer, _normalised([GOOD]), "m", template=shifty)


def test_only_records_with_tool_features_are_rendered_here() -> None:
    assert not chat.needs_rendering(_normalised(chat_records(3)))
    assert chat.needs_rendering(_normalised([*chat_records(3), record(USER, {**FINAL, "weight": 1}, {**FINAL, "weight": 0})]))


def test_rows_cut_by_max_length_are_reported() -> None:
    rows = [{"input_ids": [1] * 6, "assistant_masks": [0, 0, 1, 1, 1, 1]}, {"input_ids": [1] * 3, "assistant_masks": [0, 1, 1]}]
    assert chat.cut_by_max_length(rows, 6) is None
    assert chat.cut_by_max_length(rows, 4) == ("1 of 2 examples are longer than maxLength 4 tokens (longest 6); they are "
                                               "cut there, losing 2 of the assistant's tokens: raise hyperparameters.maxLength")


def test_tools_are_rendered_as_vllm_serves_them() -> None:
    """vLLM dumps a request's tools through its FunctionDefinition: description and parameters always (null when
    absent), strict only when set, unknown keys dropped, in that order. The trainer renders the same."""
    tool = {"type": "function", "function": {"parameters": {"type": "object"}, "x-note": "dropped", "name": "f"}}
    assert openai_chat.check_tools([tool]) == (
        [{"type": "function", "function": {"name": "f", "description": None, "parameters": {"type": "object"}}}], [])
    assert openai_chat.check_tools([{"name": "f", "strict": True}])[0][0]["function"] == {
        "name": "f", "description": None, "parameters": None, "strict": True}
    assert openai_chat.check_tools([{"name": "f", "strict": "yes"}])[1] == ["tools[0].strict must be true or false (got 'yes')"]
