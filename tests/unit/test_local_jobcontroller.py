"""The Job controller's verdict as `kubetune local` plays it: the built Job's own podFailurePolicy and
backoffLimit, evaluated as kubernetes pkg/controller/job/pod_failure_policy.go does."""

from __future__ import annotations

import pytest

from kubetune.api import exit_codes
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import parse
from kubetune.builders.finetunejob import build_children, resolve_spec
from kubetune.config import OperatorSettings
from kubetune_local.jobcontroller import PolicyMatch, attempt_verdict, match_pod_failure_policy

SETTINGS = OperatorSettings(default_output_uri="s3://adapters/prod")
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot", "namespace": "ml", "uid": "u1"},
        "spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "s3://data/chat.jsonl"}, "backoffLimit": 2}}


def _built_job() -> dict:
    resolved = resolve_spec(parse(FineTuneJobSpec, BODY["spec"]), SETTINGS)
    return build_children(BODY, resolved, SETTINGS)[-1]


def _pod(code: int, *conditions: tuple[str, str], container: str = "trainer", name: str = "bot-train-0") -> dict:
    return {"metadata": {"namespace": "ml", "name": name}, "status": {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": [{"type": t, "status": s} for t, s in conditions],
        "containerStatuses": [{"name": container, "state": {"terminated": {"exitCode": code}}}]}}


def test_the_built_jobs_policy_fails_on_user_error_ignores_disruption_and_counts_the_rest():
    policy = _built_job()["spec"]["podFailurePolicy"]
    assert match_pod_failure_policy(policy, _pod(exit_codes.USER_ERROR)) == PolicyMatch(
        "FailJob", True, "Container trainer for pod ml/bot-train-0 failed with exit code 1 matching FailJob rule at index 0", 0)
    # preempted: SIGTERM, checkpoint, exit 143, with the DisruptionTarget condition Kubernetes sets first
    assert match_pod_failure_policy(policy, _pod(exit_codes.PREEMPTED, ("DisruptionTarget", "True"))) == PolicyMatch("Ignore", False, None, 1)
    # the same exit without a disruption (e.g. the pod was deleted) counts, like any crash
    assert match_pod_failure_policy(policy, _pod(exit_codes.PREEMPTED)) == PolicyMatch(None, True)
    assert match_pod_failure_policy(policy, _pod(exit_codes.INTERNAL_ERROR)) == PolicyMatch(None, True)
    assert match_pod_failure_policy(policy, _pod(exit_codes.INTERNAL_ERROR, ("DisruptionTarget", "False"))) == PolicyMatch(None, True)


def test_rules_are_evaluated_in_order_and_the_first_match_wins():
    pod = _pod(1, ("DisruptionTarget", "True"))
    fail_first = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}},
                            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    ignore_first = {"rules": fail_first["rules"][::-1]}
    assert match_pod_failure_policy(fail_first, pod).action == "FailJob"
    assert match_pod_failure_policy(ignore_first, pod) == PolicyMatch("Ignore", False, None, 0)


@pytest.mark.parametrize(("requirement", "code", "matches"), [
    ({"operator": "In", "values": [1, 2]}, 2, True),
    ({"operator": "In", "values": [1, 2]}, 3, False),
    ({"operator": "NotIn", "values": [1, 2]}, 3, True),
    ({"operator": "NotIn", "values": [1, 2]}, 1, False),
    ({"operator": "NotIn", "values": [1]}, 0, False),  # a container that succeeded never matches
    ({"containerName": "trainer", "operator": "In", "values": [7]}, 7, True),
    ({"containerName": "other", "operator": "In", "values": [7]}, 7, False),
    ({"operator": "Bogus", "values": [7]}, 7, False),
])
def test_on_exit_codes(requirement, code, matches):
    policy = {"rules": [{"action": "Count", "onExitCodes": requirement}]}
    assert (match_pod_failure_policy(policy, _pod(code)).action == "Count") is matches


def test_on_pod_conditions_status_defaults_to_true_and_unknown_actions_are_skipped():
    pod = _pod(5, ("ConfigIssue", "True"))
    assert match_pod_failure_policy({"rules": [{"action": "FailJob", "onPodConditions": [{"type": "ConfigIssue"}]}]}, pod) == \
        PolicyMatch("FailJob", True, "Pod ml/bot-train-0 has condition ConfigIssue matching FailJob rule at index 0", 0)
    assert match_pod_failure_policy({"rules": [{"action": "FailJob", "onPodConditions": [
        {"type": "ConfigIssue", "status": "False"}]}]}, pod).action is None
    skipped = {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [5]}},
                         {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [5]}}]}
    assert match_pod_failure_policy(skipped, pod) == PolicyMatch("Ignore", False, None, 1)
    assert match_pod_failure_policy(None, pod) == PolicyMatch(None, True)


def test_backoff_limit_counts_failures_but_not_ignored_disruptions():
    job = _built_job()  # backoffLimit 2
    assert job["spec"]["backoffLimit"] == 2
    crash = _pod(exit_codes.INTERNAL_ERROR)
    preempted = _pod(exit_codes.PREEMPTED, ("DisruptionTarget", "True"))
    assert attempt_verdict(job, [crash]) == {"failed": 1, "ignored": 0}
    job["status"] = {"failed": 2}
    # the third failure exceeds backoffLimit 2 ...
    assert attempt_verdict(job, [crash]) == {"failed": 3, "ignored": 0, "condition": (
        "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")}
    # ... a disruption does not, however many there are
    for _ in range(5):
        assert attempt_verdict(job, [preempted]) == {"failed": 2, "ignored": 1}
    assert attempt_verdict(job, [_pod(exit_codes.USER_ERROR)])["condition"][:2] == ("Failed", "PodFailurePolicy")
    assert attempt_verdict(job, [_pod(0), _pod(0, name="bot-train-1")])["condition"][0] == "Complete"
