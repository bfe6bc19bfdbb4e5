"""LLaMA-Factory's sharegpt tool-calling shape (the shape of its data/glaive_toolcall_en_demo.json, our copy:
tests/trainer/lf_data.glaive_toolcall): `function_call` / `observation` turns and `tools` as a JSON string,
read by data.load as LLaMA-Factory's dataset_info.json entry maps it, normalised to exactly what the equivalent
OpenAI tool record gives (so it trains through kubetune_trainer.chat like one), and bad records named by
file:line:field in the data's own terms. Fast: no tokenizer, no training (test_tools_training.py trains)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from kubetune.api.finetunejob import Dataset
from kubetune_trainer import chat, data, formats
from kubetune_trainer.errors import DataError
from tests.fixtures.tiny_data import UNLEARNED, WEATHER_TOOL, tool_records
from tests.trainer import lf_data

COLUMNS = {"messages": "conversations", "tools": "tools"}  # glaive_toolcall_en_demo's dataset_info.json entry


def _names(dataset: dict) -> formats.Names:
    return formats.Names.of(Dataset.model_validate({"train": "s3://data/x.json", **dataset}))


def _load(path: Path, dataset: dict) -> data.Loaded:
    return data.load([path], fmt=dataset.get("format", "auto"), method="sft", fields=_names(dataset))


def openai_equivalent(n: int) -> list[dict]:
    """tiny_data.tool_records, normalised, without what LLaMA-Factory's shape cannot say: call ids (answers are
    linked by position) and weights (every gpt turn is learned)."""
    out = []
    for record in tool_records(n):
        for message in record["messages"]:
            message.pop("weight", None)
            message.pop("tool_call_id", None)
            for call in message.get("tool_calls", []):
                call.pop("id")
        normalised, problems = formats.check_record("chatml", record)
        assert problems == []
        out.append(normalised)
    return out


@pytest.mark.parametrize("dataset", [{"format": "sharegpt", "columns": COLUMNS}, {}], ids=["imported", "auto"])
def test_glaive_shape_normalises_to_the_openai_record(tmp_path, dataset):
    path = tmp_path / "glaive_toolcall_en_demo.json"
    path.write_text(lf_data.json_array(lf_data.glaive_toolcall(16)))
    loaded = _load(path, dataset)
    assert (loaded.format, loaded.conversational) == ("sharegpt", True)
    assert loaded.records == openai_equivalent(16)
    assert loaded.records[0]["messages"][3] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Blorp"}}}]}
    assert loaded.records[0]["messages"][4] == {"role": "tool", "content": "purple rain", "name": "get_weather"}
    assert chat.needs_rendering(loaded.records)  # rendered and masked like OpenAI tool records


def test_the_importers_dataset_fields_read_the_glaive_shape(tmp_path):
    """`kubetune import llamafactory` of a config training on glaive_toolcall_en_demo: its spec.dataset, given to
    the trainer's loader, reads the file."""
    import yaml

    from kubetune.importers.llamafactory import convert

    examples = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory"
    config = yaml.safe_load((examples / "llama3_lora_sft.yaml").read_text()) | {"dataset": "glaive_toolcall_en_demo"}
    info = json.loads((examples / "dataset_info.json").read_text())
    manifest = convert(config, info, name="job", data_uri_prefix="s3://lf-data/data").manifest
    assert manifest["spec"]["dataset"]["columns"] == COLUMNS
    dataset = {k: v for k, v in manifest["spec"]["dataset"].items() if k != "train"}
    path = tmp_path / "glaive_toolcall_en_demo.json"
    path.write_text(lf_data.json_array(lf_data.glaive_toolcall(12)))
    assert _load(path, dataset).records == openai_equivalent(12)


def test_tags_rename_the_tool_turns_and_columns_the_tools(tmp_path):
    """LLaMA-Factory's "OpenAI format" entry: role/content tags, and (dataset.tags) its own tool role values."""
    renamed = {"human": "user", "gpt": "assistant", "function_call": "tool_call", "observation": "tool_result"}
    records = [{"dialog": [{"role": renamed[t["from"]], "content": t["value"]} for t in r["conversations"]],
                "functions": json.loads(r["tools"]), "system": "Be brief."} for r in lf_data.glaive_toolcall(12)]
    path = tmp_path / "dialog.jsonl"
    path.write_text(lf_data.jsonl(records))
    tags = {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant",
            "functionTag": "tool_call", "observationTag": "tool_result"}
    loaded = _load(path, {"format": "sharegpt", "columns": {"messages": "dialog", "tools": "functions"}, "tags": tags})
    expected = [{**r, "messages": [{"role": "system", "content": "Be brief."}, *r["messages"]]}
                for r in openai_equivalent(12)]
    assert loaded.records == expected


def test_system_column_and_tools_without_a_call():
    """The system column goes first; tools offered but not called still reach the template."""
    record = {"conversations": [{"from": "human", "value": UNLEARNED[0]}, {"from": "gpt", "value": UNLEARNED[1]}],
              "system": "Be brief.", "tools": json.dumps([WEATHER_TOOL["function"]])}
    normalised, problems = formats.check_record("sharegpt", record)
    assert problems == []
    assert normalised == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": UNLEARNED[0]},
                                       {"role": "assistant", "content": UNLEARNED[1]}],
                          "tools": [{"type": "function", "function": {**WEATHER_TOOL["function"], "description": None}}]}
    assert formats.check_record("sharegpt", {**record, "tools": "[]"})[0] == {"messages": normalised["messages"]}


def _set(turn: int, value):
    return lambda r: r["conversations"][turn].update(value=value)


# (change to record 4 of 12, the problem data.load reports: file:line:field, in the data's own terms)
BROKEN = {
    "call-not-json": (_set(3, "get_weather(city='Blorp')"),
                      "conversations[3].value is not valid JSON: Expecting value (column 1)"),
    "call-not-a-call": (_set(3, json.dumps({"city": "Blorp"})),
                        'conversations[3].value must be a JSON object {"name", "arguments"} or a list of them'),
    "unknown-function": (_set(3, json.dumps({"name": "get_wether", "arguments": {"city": "Blorp"}})),
                         "conversations[3].value call 0: name 'get_wether' is not one of the record's tools (get_weather)"),
    "missing-argument": (_set(3, json.dumps({"name": "get_weather", "arguments": {}})),
                         "conversations[3].value call 0: arguments lacks required argument 'city'"),
    "tools-not-json": (lambda r: r.update(tools='[{"name": "get_weather",'),
                       "tools is not valid JSON: Expecting property name enclosed in double quotes (column 25)"),
    "bad-function-name": (lambda r: r.update(tools=json.dumps([{"name": "get weather"}])),
                          "tools[0].name must be 1-64 letters, digits, _ or - (got 'get weather')"),
    "call-without-tools": (lambda r: r.pop("tools"),
                           'conversations[3].value: the record has no "tools" (the functions the model may call)'),
    "observation-out-of-turn": (lambda r: r["conversations"].pop(3),
                                "conversations[3].from must be 'gpt' or 'function_call' here (got 'observation'): turns "
                                "alternate human or observation, gpt or function_call, ... starting with human"),
    "observation-without-call": (lambda r: r["conversations"].__setitem__(2, {"from": "observation", "value": "x"}),
                                 "conversations[2]: this 'observation' turn does not follow a 'function_call' turn"),
    "ends-with-observation": (lambda r: r["conversations"].pop(),
                              "conversations must end with a 'gpt' or 'function_call' turn (the answer to learn)"),
    "observation-not-text": (_set(4, {"weather": "purple rain"}), "conversations[4].value must be a string (got object)"),
    "two-calls-one-observation": (
        _set(3, json.dumps([{"name": "get_weather", "arguments": {"city": c}} for c in ("Blorp", "Quix")])),
        "conversations[5]: the calls of conversations[3] are not all answered by 'observation' turns before it (one "
        "per call: several calls in one 'function_call' turn cannot each be answered in this shape; write such a "
        "record in the chatml (OpenAI) format)"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_bad_tool_records_name_file_line_and_field(tmp_path, name):
    change, problem = BROKEN[name]
    records = lf_data.glaive_toolcall(12)
    change(records[4])
    path = tmp_path / "tools.jsonl"
    path.write_text(lf_data.jsonl(records))
    with pytest.raises(DataError) as caught:
        _load(path, {"format": "sharegpt", "columns": COLUMNS})
    assert caught.value.problems == [f"tools.jsonl:5: {problem}"]


def test_a_last_call_needs_no_answer():
    """LLaMA-Factory allows a conversation to end with the call (the model learns to call)."""
    record = copy.deepcopy(lf_data.glaive_toolcall(1)[0])
    del record["conversations"][4:]
    normalised, problems = formats.check_record("sharegpt", record)
    assert problems == [] and normalised["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
