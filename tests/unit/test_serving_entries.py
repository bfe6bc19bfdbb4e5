"""plan.serving_entries: the guarded JSON patch that sets or removes one entry of a ModelDeployment's spec.adapters
(the gateway's API jobs, the operator's template-trained jobs), and the entry a template-trained job gets."""

from __future__ import annotations

from kubetune.plan.serving_entries import entry_patch, template_entry

GUARD = {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}


def md(adapters):
    return {"metadata": {"resourceVersion": "7"}, "spec": {"adapters": adapters} if adapters is not None else {}}


def test_add_replace_remove_touch_only_that_entry():
    legal, bot = {"name": "legal", "uri": "s3://a/legal"}, {"name": "bot", "uri": "s3://a/bot"}
    assert entry_patch(md(None), "bot", bot) == [GUARD, {"op": "add", "path": "/spec/adapters", "value": [bot]}]
    assert entry_patch(md([legal]), "bot", bot) == [GUARD, {"op": "add", "path": "/spec/adapters/-", "value": bot}]
    moved = {"name": "bot", "uri": "s3://a/bot2"}
    assert entry_patch(md([legal, bot]), "bot", moved) == [GUARD, {"op": "replace", "path": "/spec/adapters/1", "value": moved}]
    assert entry_patch(md([legal, bot]), "bot", moved, replace=False) is None  # the owner's edit is kept
    assert entry_patch(md([legal, bot]), "bot", bot) is None
    assert entry_patch(md([legal, bot]), "legal", None) == [GUARD, {"op": "remove", "path": "/spec/adapters/0"}]
    assert entry_patch(md([legal]), "bot", None) is None


def test_template_entry_by_job_here_by_uri_from_elsewhere():
    assert template_entry("team-a", "bot", "team-a", "s3://o/team-a/bot") == {"name": "bot", "fineTuneJobRef": {"name": "bot"}}
    assert template_entry("team-a", "bot.v2", "serving", "s3://o/team-a/bot.v2") == {"name": "team-a-bot-v2",
                                                                                      "uri": "s3://o/team-a/bot.v2"}
    long = template_entry("team-a", "x" * 80, "serving", "s3://o/x")["name"]
    assert len(long) == 63 and long.startswith("team-a-xxx") and long != template_entry("team-a", "x" * 81, "serving", "s3://o/x")["name"]
