"""Per-record format checks and normalisation (pure, no files)."""

from __future__ import annotations

import pytest

from kubetune_trainer import formats


@pytest.mark.parametrize(("record", "expected"), [
    ({"messages": []}, "chatml"),
    ({"conversations": []}, "sharegpt"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
    ({"prompt": "q", "rejected": "b"}, "preference"),
    ({"instruction": "i", "output": "o"}, "alpaca"),
    ({"input": "i", "output": "o"}, "alpaca"),
    ({"text": "t"}, "text"),
    ({"prompt": "q", "completion": "a", "label": True}, "unpaired"),
    ({"conversations": [], "kto_tag": False}, "unpaired"),
    ({"question": "q", "answer": "a"}, None),
    (["not", "an", "object"], None),
])
def test_detect(record, expected):
    assert formats.detect(record) == expected


def test_chatml_valid_is_normalised():
    record = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "yo", "extra": 1}], "id": 7}
    assert formats.check_record("chatml", record) == (
        {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "yo"}]}, [])


@pytest.mark.parametrize(("messages", "problems"), [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "bot", "content": "x"}],
     ["messages[2].role must be one of system,user,assistant (got 'bot')"]),
    ([{"role": "user", "content": "q"}], ["messages has no assistant message (nothing to learn from)"]),
    ([], ["messages must not be empty"]),
    ("hello", ["messages must be a list of messages (got string)"]),
    ([{"role": "user"}, {"content": "a"}], ["messages[0].content is missing", "messages[1].role is missing"]),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": " "}],
     ["messages[0].content must be a string (got number)", "messages[1].content must not be empty"]),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     ["messages[1].role: a system message is only allowed first"]),
    (["hi"], ["messages[0] must be an object with role and content (got string)"]),
])
def test_chatml_problems_name_the_field(messages, problems):
    assert formats.check_record("chatml", {"messages": messages}) == (None, problems)


def test_chatml_missing_key():
    assert formats.check_record("chatml", {"msgs": []}) == (None, ['missing field "messages"'])


def test_not_an_object():
    assert formats.check_record("text", [1, 2]) == (None, ["must be a JSON object (got array)"])


def test_sharegpt_maps_roles():
    record = {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}]}
    assert formats.check_record("sharegpt", record) == ({"messages": [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"}]}, [])
    bad = {"conversations": [{"from": "robot", "value": "q"}]}
    assert formats.check_record("sharegpt", bad) == (
        None, ["conversations[0].from must be one of system,human,user,gpt,assistant,function_call,observation (got 'robot')"])


def test_alpaca_to_messages():
    assert formats.check_record("alpaca", {"instruction": "Add", "input": "1 2", "output": "3"}) == (
        {"messages": [{"role": "user", "content": "Add\n1 2"}, {"role": "assistant", "content": "3"}]}, [])
    assert formats.check_record("alpaca", {"instruction": "Hi", "output": "Yo", "system": "S"}) == (
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Yo"}]}, [])
    assert formats.check_record("alpaca", {"instruction": "", "output": 5}) == (
        None, ["instruction must not be empty", "output must be a string (got number)"])


def test_preference_strings_and_lists():
    assert formats.check_record("preference", {"prompt": "q", "chosen": "a", "rejected": "b"}) == (
        {"prompt": "q", "chosen": "a", "rejected": "b"}, [])
    mixed = {"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    assert formats.check_record("preference", mixed) == ({
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}]}, [])


@pytest.mark.parametrize(("record", "problems"), [
    ({"prompt": "q", "rejected": "b"}, ['missing field "chosen"']),
    ({"chosen": "a", "rejected": "b"}, ['missing field "prompt"']),
    ({"prompt": "q", "chosen": "", "rejected": 1}, ["chosen must not be empty",
                                                   "rejected must be a string, a message or a list of messages (got number)"]),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, ["prompt must end with a user message"]),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     ["chosen must hold only assistant messages (the prompt holds the rest)"]),
])
def test_preference_problems(record, problems):
    assert formats.check_record("preference", record) == (None, problems)


def test_text():
    assert formats.check_record("text", {"text": "hello"}) == ({"text": "hello"}, [])
    assert formats.check_record("text", {"text": "  "}) == (None, ["text must not be empty"])
    assert formats.check_record("text", {"body": "x"}) == (None, ['missing field "text"'])


def test_as_conversational():
    assert formats.as_conversational({"prompt": "q", "chosen": "a", "rejected": "b"}) == {
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}]}


def test_unpaired_strings_and_messages():
    assert formats.check_record("unpaired", {"prompt": "q", "completion": "a", "label": False, "id": 1}) == (
        {"prompt": "q", "completion": "a", "label": False}, [])
    assert formats.check_record("unpaired", {"prompt": [{"role": "user", "content": "q"}], "completion": "a",
                                             "label": "True"}) == (  # a CSV cell
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}],
         "label": True}, [])


def test_unpaired_llama_factory_kto_tag_in_sharegpt_shape():
    record = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}], "kto_tag": True}
    assert formats.check_record("unpaired", record) == (
        {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": "a"}], "label": True}, [])


@pytest.mark.parametrize(("record", "problems"), [
    ({"prompt": "q", "completion": "a"}, ['missing field "label"']),
    ({"prompt": "q", "completion": "a", "label": 1}, ["label must be true or false (got 1)"]),
    ({"prompt": "q", "completion": " ", "label": True}, ["completion must not be empty"]),
    ({"completion": [{"role": "user", "content": "a"}], "prompt": "q", "label": True},
     ["completion must hold only assistant messages (the prompt holds the rest)"]),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "kto_tag": "yes"},
     ["kto_tag must be true or false (got 'yes')"]),
    ({"conversations": [{"from": "gpt", "value": "a"}], "kto_tag": True},
     ["conversations[0].from must be 'human' here (got 'gpt'): turns alternate human, gpt, ... starting with human"]),
])
def test_unpaired_problems_name_the_field(record, problems):
    assert formats.check_record("unpaired", record) == (None, problems)
