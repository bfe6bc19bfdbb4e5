"""Dataset files -> validated records, with file:line:field problems (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kubetune_trainer import data
from kubetune_trainer.errors import DataError, UserError
from tests.fixtures.tiny_data import chat_records, preference_records, text_records, unpaired_records, write_jsonl


def _raises(files, **kwargs) -> DataError:
    kwargs.setdefault("fmt", "auto")
    kwargs.setdefault("method", "sft")
    with pytest.raises(DataError) as info:
        data.load(files, **kwargs)
    assert isinstance(info.value, UserError)
    return info.value


def test_valid_chat_jsonl(tmp_path):
    loaded = data.load([write_jsonl(tmp_path / "train.jsonl", chat_records(60))], fmt="auto", method="sft")
    assert (loaded.format, len(loaded.records), loaded.files, loaded.warnings) == ("chatml", 60, ["train.jsonl"], [])
    assert loaded.records[0] == chat_records(1)[0]
    assert loaded.conversational


def test_wrong_role_is_reported_with_line_and_field(tmp_path):
    records = chat_records(30)
    records[16]["messages"].append({"role": "bot", "content": "x"})  # line 17
    error = _raises([write_jsonl(tmp_path / "train.jsonl", records)])
    assert error.problems == ["train.jsonl:17: messages[2].role must be one of system,user,assistant (got 'bot')"]
    assert error.summary == "train data is invalid: 1 of 30 records in train.jsonl have problems (format chatml)"
    assert "train.jsonl:17: messages[2].role must be one of system,user,assistant" in str(error)


def test_wrong_keys_and_non_json(tmp_path):
    lines = [json.dumps(r) for r in chat_records(12)]
    lines[2] = json.dumps({"msgs": []})
    lines[5] = "{not json"
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    error = _raises([path])
    assert error.problems == [
        "train.jsonl:6: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        'train.jsonl:3: missing field "messages"',
    ]
    assert error.summary.startswith("train data is invalid: 2 of 12 records in train.jsonl")


# blank lines anywhere: empty, spaces, a tab, CRLF, leading, between records, trailing
BLANKS = {0: "", 4: "   ", 5: "\t", 9: " \r", 13: ""}


def _with_blank_lines(path: Path, records: list) -> Path:
    """JSONL with the BLANKS lines inserted (at those 0-based file lines) and two trailing blank lines."""
    lines = [json.dumps(r) for r in records]
    for index, blank in sorted(BLANKS.items()):
        lines.insert(index, blank)
    path.write_text("\n".join(lines) + "\n\n  \n")
    return path


def test_blank_lines_are_skipped_like_every_jsonl_reader_does(tmp_path):
    loaded = data.load([_with_blank_lines(tmp_path / "train.jsonl", chat_records(60))], fmt="auto", method="sft")
    assert (loaded.format, len(loaded.records), loaded.warnings) == ("chatml", 60, [])
    assert loaded.records == [data.formats.check_record("chatml", r)[0] for r in chat_records(60)]  # order kept
    held = data.load([_with_blank_lines(tmp_path / "validation.jsonl", chat_records(12))], fmt="chatml", method="sft",
                     role="validation", min_examples=1)
    assert len(held.records) == 12


def test_errors_after_blank_lines_name_the_files_own_line_numbers(tmp_path):
    records = chat_records(30)
    records[2]["messages"][1]["role"] = "bot"  # record 3, after 1 blank line: file line 4
    records[20] = {"msgs": []}  # record 21, after all 5 blank lines: file line 26
    path = _with_blank_lines(tmp_path / "train.jsonl", records)
    lines = path.read_text().splitlines()
    assert (lines[3], lines[25]) == (json.dumps(records[2]), json.dumps(records[20]))  # the file's own lines 4, 26
    error = _raises([path])
    assert error.problems == ["train.jsonl:4: messages[1].role must be one of system,user,assistant (got 'bot')",
                              'train.jsonl:26: missing field "messages"']
    assert error.summary == "train data is invalid: 2 of 30 records in train.jsonl have problems (format chatml)"


def test_only_blank_lines_is_an_empty_dataset(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n  \n\t\n")
    assert str(_raises([path])) == "train data train.jsonl is empty"


def test_undetectable_format(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}] * 20)
    error = _raises([path])
    assert str(error) == (
        "cannot detect the format of train.jsonl: records have keys ['answer', 'question']; expected messages "
        "(chatml); instruction/input/output (alpaca); conversations (sharegpt); text (text)")  # what sft reads


def test_too_few_and_few(tmp_path, caplog):
    error = _raises([write_jsonl(tmp_path / "train.jsonl", chat_records(9))])
    assert str(error) == "train data train.jsonl has only 9 valid example(s); at least 10 are needed"
    loaded = data.load([write_jsonl(tmp_path / "ok.jsonl", chat_records(10))], fmt="auto", method="sft")
    assert loaded.warnings == ["train data has only 10 examples (fewer than 50): expect overfitting"]


def test_missing_chosen_for_dpo(tmp_path):
    records = preference_records(20)
    del records[4]["chosen"]
    error = _raises([write_jsonl(tmp_path / "pairs.jsonl", records)], method="dpo")
    assert error.problems == ['pairs.jsonl:5: missing field "chosen"']


def test_method_needs_matching_format(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_records(20))
    assert str(_raises([path], method="sft")) == (
        "pairs.jsonl: method sft cannot train on preference data (it needs chatml, alpaca, sharegpt, text)")
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_records(20))
    assert "(format text)" in _raises([chat], method="cpt").summary  # cpt reads text: every record lacks it
    assert _raises([chat], method="cpt").problems[0] == 'chat.jsonl:1: missing field "text"'


def test_problems_are_capped(tmp_path):
    error = _raises([write_jsonl(tmp_path / "t.jsonl", [{"text": ""}] * 30)], method="cpt")
    assert len(error.problems) == data.MAX_PROBLEMS + 1
    assert error.problems[-1] == "... and 10 more problems"
    assert str(error).endswith("; and 11 more (see the pod log)")


def test_json_array_and_wrapped(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(text_records(12)))
    assert len(data.load([tmp_path / "a.json"], fmt="auto", method="cpt").records) == 12
    (tmp_path / "b.json").write_text(json.dumps({"data": text_records(12)[:11] + [{"text": 5}]}))
    assert _raises([tmp_path / "b.json"], method="cpt").problems == ["b.json[11]: text must be a string (got number)"]
    (tmp_path / "c.json").write_text('[{"text": "a"},\n {"text": }]')
    assert _raises([tmp_path / "c.json"], method="cpt").problems == ["c.json:2: not valid JSON: Expecting value (column 11)"]


def test_csv_alpaca_and_json_cells(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output"])
        for i in range(11):
            writer.writerow([f"Say {i}", "", f"{i}"])
        writer.writerow(["", "", "x"])  # line 13
    loaded_error = _raises([path])
    assert loaded_error.problems == ['train.csv:13: missing field "instruction"']  # an empty cell is a missing field
    chat = tmp_path / "chat.csv"
    with chat.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages"])
        for record in chat_records(12):
            writer.writerow([json.dumps(record["messages"])])
    loaded = data.load([chat], fmt="auto", method="sft")
    assert (loaded.format, loaded.records[:2]) == ("chatml", chat_records(2))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(text_records(11) + [{"text": None}]), tmp_path / "t.parquet")
    assert _raises([tmp_path / "t.parquet"], method="cpt").problems == ['t.parquet[11]: missing field "text"']
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    assert _raises([tmp_path / "bad.parquet"], method="cpt").problems[0].startswith("bad.parquet: not a readable Parquet file")


def test_not_utf8_and_unknown_type(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "\xff"}\n')
    assert _raises([tmp_path / "x.jsonl"], method="cpt").problems == ["x.jsonl: not UTF-8 text (byte 10)"]
    (tmp_path / "x.xml").write_text("<hello/>")
    assert _raises([tmp_path / "x.xml"], method="cpt").problems == [
        "x.xml: unsupported file type '.xml' (use .jsonl, .json, .csv, .parquet, .txt)"]


def test_mixed_preference_forms_become_conversational(tmp_path):
    records = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 6 + preference_records(6)
    loaded = data.load([write_jsonl(tmp_path / "p.jsonl", records)], fmt="auto", method="dpo")
    assert loaded.records[0] == {"prompt": [{"role": "user", "content": "q"}],
                                 "chosen": [{"role": "assistant", "content": "a"}],
                                 "rejected": [{"role": "assistant", "content": "b"}]}
    assert loaded.conversational


def test_split_is_deterministic_and_disjoint():
    records = [{"text": str(i)} for i in range(40)]
    train, held = data.split(records, 0.1, seed=42)
    assert (len(train), len(held)) == (36, 4)
    assert data.split(records, 0.1, seed=42) == (train, held)
    assert {r["text"] for r in train}.isdisjoint({r["text"] for r in held})
    assert data.split(records, 0.1, seed=1)[1] != held
    assert [len(x) for x in data.split(records[:10], 0.01, seed=0)] == [9, 1]


def test_folder_of_files_is_read_in_order(tmp_path: Path):
    write_jsonl(tmp_path / "b.jsonl", text_records(6))
    write_jsonl(tmp_path / "a.jsonl", [{"text": "first"}] * 6)
    loaded = data.load(sorted(tmp_path.glob("*.jsonl")), fmt="text", method="sft")
    assert (loaded.records[0], loaded.files) == ({"text": "first"}, ["a.jsonl", "b.jsonl"])


def test_kto_reads_unpaired_records_and_llama_factory_kto_tags(tmp_path):
    tagged = [{"conversations": [{"from": "human", "value": r["prompt"][0]["content"]},
                                 {"from": "gpt", "value": r["completion"][0]["content"]}], "kto_tag": r["label"]}
              for r in unpaired_records(6)]
    path = write_jsonl(tmp_path / "kto.jsonl", unpaired_records(6) + tagged)
    loaded = data.load([path], fmt="auto", method="kto")
    assert (loaded.format, loaded.conversational) == ("unpaired", True)
    assert loaded.records[6:] == unpaired_records(6)  # the sharegpt shape normalises to prompt/completion/label
    assert str(_raises([path], method="sft")) == (
        "kto.jsonl: method sft cannot train on unpaired data (it needs chatml, alpaca, sharegpt, text)")


def test_kto_label_problems_name_file_line_and_field(tmp_path):
    records = unpaired_records(20)
    records[2]["label"] = "yes"
    del records[6]["completion"]
    error = _raises([write_jsonl(tmp_path / "kto.jsonl", records)], method="kto")
    assert error.problems == ["kto.jsonl:3: label must be true or false (got 'yes')",
                              'kto.jsonl:7: missing field "completion"']
    assert "(format unpaired)" in error.summary


def test_kto_csv_labels_are_true_or_false_cells(tmp_path):
    path = tmp_path / "kto.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completion", "label"])
        for i in range(12):
            writer.writerow([f"q{i}", f"a{i}", "true" if i % 2 else "FALSE"])
    loaded = data.load([path], fmt="unpaired", method="kto")
    assert [r["label"] for r in loaded.records[:3]] == [False, True, False]
    assert not loaded.conversational


def test_kto_takes_preference_pairs_as_one_desirable_and_one_undesirable_answer(tmp_path):
    from kubetune_trainer.methods import TRAINERS

    loaded = data.load([write_jsonl(tmp_path / "pairs.jsonl", preference_records(12))], fmt="auto", method="kto")
    assert loaded.format == "preference"  # auto: the records' keys decide between kto's two formats
    rows = TRAINERS["kto"].prepare(loaded.records, 42)
    assert len(rows) == 24 and sum(r["label"] for r in rows) == 12
    pair = loaded.records[0]
    assert {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True} in rows
    assert {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False} in rows
    assert rows == TRAINERS["kto"].prepare(loaded.records, 42) != TRAINERS["kto"].prepare(loaded.records, 7)
    assert [r["label"] for r in rows[:8]] != [True] * 8  # shuffled: KTO's sampler keeps this order
