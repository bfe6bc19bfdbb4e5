"""LLaMA-Factory's formats (files in its published shapes, tests/trainer/lf_data.py) -> validated, normalised
records; dataset.columns/tags; problems named by file:line:field. No training (test_training_formats.py trains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.finetunejob import Dataset
from kubetune_trainer import data, formats
from kubetune_trainer.errors import DataError
from tests.fixtures.tiny_data import FACTS, WRONG
from tests.trainer import lf_data

Q0, A0 = FACTS[0]
Q1, A1 = FACTS[1]
Q2, A2 = FACTS[2]


def _names(dataset: dict) -> formats.Names:
    return formats.Names.of(Dataset.model_validate({"train": "s3://data/x.jsonl", **dataset}))


def _load(path: Path, method: str, dataset: dict | None = None) -> data.Loaded:
    dataset = dataset or {}
    return data.load([path], fmt=dataset.get("format", "auto"), method=method, fields=_names(dataset))


def _error(path: Path, method: str, dataset: dict | None = None) -> DataError:
    with pytest.raises(DataError) as caught:
        _load(path, method, dataset)
    return caught.value


USER, ASSISTANT = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})
SYSTEM = {"role": "system", "content": lf_data.SYSTEM}
# The first two records of every case, normalised (what TRL trains on).
EXPECTED = {
    "alpaca-system-history": ("alpaca", [{"messages": [SYSTEM, USER(Q0), ASSISTANT(A0)]},
                                         {"messages": [SYSTEM, USER(Q2), ASSISTANT(A2), USER(Q1), ASSISTANT(A1)]}]),
    "sharegpt-system": ("sharegpt", [{"messages": [SYSTEM, USER(Q0), ASSISTANT(A0)]},
                                     {"messages": [SYSTEM, USER(Q1), ASSISTANT(A1)]}]),
    "openai-via-columns-and-tags": ("sharegpt", [{"messages": [SYSTEM, USER(Q0), ASSISTANT(A0)]},
                                                 {"messages": [SYSTEM, USER(Q1), ASSISTANT(A1)]}]),
    "alpaca-renamed-columns": ("alpaca", [{"messages": [USER(Q0), ASSISTANT(A0)]}, {"messages": [USER(Q1), ASSISTANT(A1)]}]),
    "alpaca-preference-dpo": ("preference", [{"prompt": [USER(Q0)], "chosen": [ASSISTANT(A0)], "rejected": [ASSISTANT(WRONG[Q0])]},
                                             {"prompt": [USER(Q1)], "chosen": [ASSISTANT(A1)], "rejected": [ASSISTANT(WRONG[Q1])]}]),
    "sharegpt-preference-dpo": ("preference", [{"prompt": [USER(Q0)], "chosen": [ASSISTANT(A0)], "rejected": [ASSISTANT(WRONG[Q0])]},
                                               {"prompt": [USER(Q1)], "chosen": [ASSISTANT(A1)], "rejected": [ASSISTANT(WRONG[Q1])]}]),
    "sharegpt-kto": ("unpaired", [{"prompt": [USER(Q0)], "completion": [ASSISTANT(A0)], "label": True},
                                  {"prompt": [USER(Q0)], "completion": [ASSISTANT(WRONG[Q0])], "label": False}]),
    "alpaca-kto": ("unpaired", [{"prompt": [USER(Q0)], "completion": [ASSISTANT(A0)], "label": True},
                                {"prompt": [USER(Q0)], "completion": [ASSISTANT(WRONG[Q0])], "label": False}]),
    "pretraining-txt": ("text", [{"text": f"{Q0} {A0}"}, {"text": f"{Q1} {A1}"}]),
    "pretraining-jsonl-renamed": ("text", [{"text": f"{Q0} {A0}"}, {"text": f"{Q1} {A1}"}]),
}


@pytest.mark.parametrize("case", lf_data.CASES, ids=lambda c: c.name)
def test_each_llama_factory_shape_is_detected_and_normalised(case, tmp_path):
    loaded = _load(lf_data.write(case, tmp_path), case.method["type"], case.dataset)
    fmt, first = EXPECTED[case.name]
    assert (loaded.format, len(loaded.records), loaded.records[:2]) == (fmt, 64, first)


@pytest.mark.parametrize(("one", "other"), lf_data.SAME_RECORDS)
def test_shapes_that_train_alike_normalise_to_the_same_records(one, other, tmp_path):
    a, b = (next(c for c in lf_data.CASES if c.name == name) for name in (one, other))
    assert _load(lf_data.write(a, tmp_path / "a"), a.method["type"], a.dataset).records == \
        _load(lf_data.write(b, tmp_path / "b"), b.method["type"], b.dataset).records


def test_sharegpt_turns_must_alternate_and_end_with_the_answer(tmp_path):
    good = {"conversations": [{"from": "human", "value": Q0}, {"from": "gpt", "value": A0}]}
    records = [good] * 12 + [
        {"conversations": [{"from": "human", "value": Q0}, {"from": "human", "value": "again"}, {"from": "gpt", "value": A0}]},
        {"conversations": [{"from": "human", "value": Q0}]},
        {"conversations": [{"from": "human", "value": Q0}, {"from": "gpt", "value": A0}, {"from": "system", "value": "late"}]},
        {"conversations": [{"from": "human", "value": Q0}, {"from": "function_call", "value": "{}"}]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(lf_data.jsonl(records))
    error = _error(path, "sft")
    assert error.summary == "train data is invalid: 4 of 16 records in chat.jsonl have problems (format sharegpt)"
    assert error.problems == [
        "chat.jsonl:13: conversations[1].from must be 'gpt' here (got 'human'): turns alternate human, gpt, ... starting with human",
        "chat.jsonl:14: conversations must end with a 'gpt' turn (the answer to learn)",
        "chat.jsonl:15: conversations[2].from: a system message is only allowed first",
        'chat.jsonl:16: conversations[1].value must be a JSON object {"name", "arguments"} or a list of them',
    ]


def test_sharegpt_system_message_overrides_the_system_column_as_in_llama_factory():
    record = {"conversations": [{"from": "system", "value": "first"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}], "system": "column"}
    assert formats.check_record("sharegpt", record)[0]["messages"][0] == {"role": "system", "content": "first"}


# (records, {index: fields set, None = field deleted}, file, method, dataset, problems)
BROKEN = {
    "alpaca-history": (lf_data.alpaca_sft, {3: {"history": [["only a question"]]}, 5: {"history": "not a list"},
                                            7: {"history": [["q", " "]]}}, "alpaca.json", "sft", {}, [
        "alpaca.json[3]: history[0] must be a [user, assistant] pair of strings (got ['only a question'])",
        "alpaca.json[5]: history must be a list of [user, assistant] pairs (got string)",
        "alpaca.json[7]: history[0] must not hold an empty turn"]),
    "sharegpt-preference": (lf_data.sharegpt_preference, {
        2: {"chosen": {"from": "human", "value": A0}},
        4: {"conversations": [{"from": "human", "value": Q0}, {"from": "gpt", "value": A0}]},
        6: {"rejected": {"from": "gpt", "value": ""}}}, "pairs.jsonl", "dpo", {}, [
        "pairs.jsonl:3: chosen.from must be 'gpt' (got 'human')",
        "pairs.jsonl:5: conversations must end with a 'human' turn (the prompt that chosen and rejected answer)",
        "pairs.jsonl:7: rejected.value must be a non-empty string (got '')"]),
    "alpaca-kto-tag": (lf_data.alpaca_kto, {1: {"kto_tag": "maybe"}, 2: {"kto_tag": None}}, "kto.json", "kto", {}, [
        "kto.json[1]: kto_tag must be true or false (got 'maybe')", 'kto.json[2]: missing field "kto_tag"']),
    "renamed-columns": (lf_data.renamed_alpaca, {4: {"answer": None}}, "qa.jsonl", "sft",
                        {"columns": {"prompt": "question", "query": "context", "response": "answer"}},
                        ['qa.jsonl:5: missing field "answer"']),  # the data's own field name
}


@pytest.mark.parametrize("name", BROKEN)
def test_problems_name_file_record_and_the_datas_own_field(tmp_path, name):
    make, changes, filename, method, dataset, problems = BROKEN[name]
    records = make(12)
    for index, fields in changes.items():
        records[index] = {k: v for k, v in {**records[index], **fields}.items() if v is not None}
    path = tmp_path / filename
    path.write_text(lf_data.json_array(records) if filename.endswith(".json") else lf_data.jsonl(records))
    assert _error(path, method, dataset).problems == problems


@pytest.mark.parametrize(("dataset", "problems"), [
    ({"columns": {"prompt": "question", "response": "answr"}},
     ["dataset.columns.response names field 'answr', which no record has (records have answer, context, question)"]),
    ({"columns": {"prompt": "question", "response": "answer", "chosen": "good"}},
     ["dataset.columns.chosen ('good') is not read by alpaca data (it reads prompt, query, response, history, system)"]),
    ({"columns": {"prompt": "question", "response": "answer"}, "tags": {"roleTag": "role"}},
     ["dataset.tags apply to sharegpt-shaped data, not to alpaca data"]),
])
def test_a_column_mapping_that_does_not_fit_the_data_is_refused(tmp_path, dataset, problems):
    path = tmp_path / "qa.jsonl"
    path.write_text(lf_data.jsonl(lf_data.renamed_alpaca(12)))
    error = _error(path, "sft", {"format": "alpaca", **dataset})
    assert (error.summary, error.problems) == ("dataset.columns/tags do not fit the data", problems)


def test_txt_keeps_the_files_line_numbers_and_is_only_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(lf_data.pretraining_lines(12))
    loaded = _load(path, "cpt")
    assert (loaded.format, len(loaded.records)) == ("text", 12)
    error = _error(path, "dpo")
    assert str(error) == ("corpus.txt: a .txt file holds plain text, one document per line (format text), but this "
                          "job reads preference data (method dpo trains on preference)")
    path.write_bytes(b"fine\n\xff broken\n" * 6)
    assert _error(path, "cpt").problems == ["corpus.txt: not UTF-8 text (byte 5)"]


def test_tools_are_refused_not_dropped_where_the_shape_cannot_use_them():
    """alpaca, preference and KTO data cannot carry tools (sharegpt SFT can: test_formats_sharegpt_tools.py)."""
    tools = json.dumps([{"name": "f", "parameters": {}}])
    refused = ("tools: tool descriptions are read in sharegpt SFT data (function_call / observation turns) and in "
               "chatml (OpenAI) data, not in {} data (docs/data.md)")
    alpaca = {"instruction": Q0, "output": A0, "tools": tools}
    assert formats.check_record("alpaca", alpaca) == (None, [refused.format("alpaca")])
    assert formats.check_record("alpaca", {**alpaca, "tools": ""}) == ({"messages": [USER(Q0), ASSISTANT(A0)]}, [])
    pair = {**lf_data.sharegpt_preference(1)[0], "tools": tools}
    assert formats.check_record("preference", pair) == (None, [refused.format("preference")])
    kto = {**lf_data.sharegpt_kto(1)[0], "tools": tools}
    assert formats.check_record("unpaired", kto) == (None, [refused.format("KTO")])
    pair["conversations"] = [{"from": "human", "value": Q0}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "x"}]
    assert formats.check_record("preference", {**pair, "tools": "[]"})[1] == [
        f"conversations[{i}].from: {role!r} (a tool turn) is read in sharegpt SFT data only, not in preference or "
        "KTO data" for i, role in ((1, "function_call"), (2, "observation"))]


def test_csv_cells_of_mapped_columns_hold_json(tmp_path):
    path = tmp_path / "qa.csv"
    rows = ["question,answer,turns"] + [f'"{q}","{a}","[[""hi"", ""hello""]]"' for q, a in FACTS * 3]
    path.write_text("\n".join(rows) + "\n")
    loaded = _load(path, "sft", {"columns": {"prompt": "question", "response": "answer", "history": "turns"}})
    assert loaded.records[0] == {"messages": [USER("hi"), ASSISTANT("hello"), USER(Q0), ASSISTANT(A0)]}


@pytest.mark.parametrize(("record", "names", "expected"), [
    ({"conversations": [], "chosen": {}, "rejected": {}}, {}, "preference"),
    ({"instruction": "i", "input": "", "chosen": "a", "rejected": "b"}, {}, "preference"),
    ({"instruction": "i", "output": "o", "kto_tag": True}, {}, "unpaired"),
    ({"dialog": [{"role": "user", "content": "q"}]}, {"messages": "dialog"}, "chatml"),
    ({"dialog": [{"from": "human", "value": "q"}]}, {"messages": "dialog"}, "sharegpt"),
    ({"dialog": [{"role": "user", "content": "q"}]}, {"messages": "dialog", "role_tag": "role"}, "sharegpt"),
    ({"q": "x", "a": "y"}, {"prompt": "q", "response": "a"}, "alpaca"),
    ({"body": "x"}, {"prompt": "body"}, "text"),
    ({"text": "x"}, {"prompt": "body"}, None),
    ({"good": "a", "q": "x"}, {"prompt": "q", "chosen": "good"}, "preference"),
    ({"ok": True, "instruction": "x", "output": "y"}, {"kto_tag": "ok"}, "unpaired"),
])
def test_detection_sees_mapped_names(record, names, expected):
    assert formats.detect(record, formats.Names(**names)) == expected
