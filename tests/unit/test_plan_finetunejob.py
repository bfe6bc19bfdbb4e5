"""plan.finetunejob: when a reconcile may create the training Job (pure)."""

from __future__ import annotations

from kubetune.builders.finetunejob import SPEC_HASH_ANNOTATION, resolve_spec, spec_hash
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import parse
from kubetune.config import OperatorSettings
from kubetune.plan.finetunejob import plan

SETTINGS = OperatorSettings(trainer_image="registry.example/kubetune/trainer:1", default_output_uri="s3://out",
                            preflight_enabled=False)  # the pre-flight's own plan: test_preflight.py
SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot", "namespace": "ml", "uid": "u"},
        "spec": SPEC}


def status(type_: str, reason: str) -> dict:
    return {"conditions": [{"type": type_, "status": "True", "reason": reason, "message": ""}]}


def test_a_job_is_created_only_while_none_exists_and_the_run_has_not_ended():
    assert plan(BODY, SETTINGS, None, {}).create_job
    assert plan(BODY, SETTINGS, None, status("Failed", "ValidationFailed")).create_job  # a fixed spec starts it
    for ended in (status("Succeeded", "Completed"), status("Failed", "OOMKilled"), status("Failed", "Cancelled")):
        assert not plan(BODY, SETTINGS, None, ended).create_job, ended
    assert not plan({**BODY, "spec": {**SPEC, "cancel": True}}, SETTINGS, None, {}).create_job


def test_a_job_of_another_spec_is_kept_and_the_change_reported():
    current = spec_hash(resolve_spec(parse(FineTuneJobSpec, SPEC), SETTINGS))
    job = {"metadata": {"name": "bot-train", "annotations": {SPEC_HASH_ANNOTATION: current}}}
    same = plan(BODY, SETTINGS, job, {})
    assert (same.create_job, same.spec_change_ignored) == (False, False)
    changed = plan({**BODY, "spec": {**SPEC, "adapter": {"rank": 32}}}, SETTINGS, job, {})
    assert (changed.create_job, changed.spec_change_ignored) == (False, True)
