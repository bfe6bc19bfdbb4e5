"""The Job controller's verdict on a finished attempt, as Kubernetes documents it. Pure: no I/O.

`kubetune local` plays the Job controller with these functions, so the Job the operator builds is
evaluated as a cluster would evaluate it: its own `spec.podFailurePolicy` and `spec.backoffLimit`,
not a copy of them. The rules follow kubernetes `pkg/controller/job/pod_failure_policy.go` and the
"Pod failure policy" page of the Job docs:

* only failed pods are matched; the rules are evaluated in order and the first match wins;
* `onExitCodes` matches a terminated container (of `containerName`, or any when unset) with a
  non-zero exit code that is `In` / `NotIn` `values`;
* `onPodConditions` matches when any pattern's `type` and `status` (default "True") equal a condition
  of the pod;
* `FailJob` fails the Job (reason PodFailurePolicy), `Ignore` does not count the pod towards
  `backoffLimit` (a replacement starts), `Count` and no match count it; an unknown action (here also
  `FailIndex`, which needs `backoffLimitPerIndex`) skips the rule;
* the Job fails with BackoffLimitExceeded once the counted failures exceed `backoffLimit` (default 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAIL_JOB, IGNORE, COUNT = "FailJob", "Ignore", "Count"
DEFAULT_BACKOFF_LIMIT = 6


@dataclass(frozen=True)
class PolicyMatch:
    """How one failed pod is handled: the matched rule's action (None: no rule matched)."""

    action: str | None
    counts: bool  # towards backoffLimit
    message: str | None = None  # the Job's failure message for FailJob
    rule: int | None = None


def _exit_code_matches(code: int, requirement: dict[str, Any]) -> bool:
    values = requirement.get("values") or []
    if requirement.get("operator") == "In":
        return code in values
    if requirement.get("operator") == "NotIn":
        return code not in values
    return False


def _matching_container(pod: dict[str, Any], requirement: dict[str, Any]) -> tuple[str, int] | None:
    status = pod.get("status") or {}
    for ctr in [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]:
        terminated = (ctr.get("state") or {}).get("terminated")
        if terminated is None:  # still terminating: no exit code to match
            continue
        name = requirement.get("containerName")
        code = int(terminated.get("exitCode") or 0)
        if (name is None or name == ctr.get("name")) and code != 0 and _exit_code_matches(code, requirement):
            return ctr["name"], code
    return None


def _matching_condition(pod: dict[str, Any], patterns: list[dict[str, Any]]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        for pattern in patterns:
            if cond.get("type") == pattern.get("type") and cond.get("status") == pattern.get("status", "True"):
                return cond["type"]
    return None


def match_pod_failure_policy(policy: dict[str, Any] | None, pod: dict[str, Any]) -> PolicyMatch:
    """The first rule of `policy` that matches the failed `pod`, as the Job controller applies it."""
    meta = pod.get("metadata") or {}
    who = f"{meta.get('namespace')}/{meta.get('name')}"
    for index, rule in enumerate((policy or {}).get("rules") or []):
        action = rule.get("action")
        if action not in (FAIL_JOB, IGNORE, COUNT):
            continue
        if rule.get("onExitCodes") is not None:
            found = _matching_container(pod, rule["onExitCodes"])
            if found is None:
                continue
            message = f"Container {found[0]} for pod {who} failed with exit code {found[1]} matching {action} rule at index {index}"
        elif rule.get("onPodConditions") is not None:
            cond = _matching_condition(pod, rule["onPodConditions"])
            if cond is None:
                continue
            message = f"Pod {who} has condition {cond} matching {action} rule at index {index}"
        else:
            continue
        return PolicyMatch(action, action != IGNORE, message if action == FAIL_JOB else None, index)
    return PolicyMatch(None, True)


def attempt_verdict(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job status fields after every pod of one attempt ended (`pods` carry their final status).

    Returns {"failed": n, "ignored": k} plus "condition": (type, reason, message) when the Job is
    finished: Complete, or Failed by a FailJob rule or by exceeding backoffLimit."""
    failed_so_far = int((job.get("status") or {}).get("failed") or 0)
    failed_pods = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    matches = [match_pod_failure_policy(job["spec"].get("podFailurePolicy"), p) for p in failed_pods]
    failed = failed_so_far + sum(1 for m in matches if m.counts)
    out: dict[str, Any] = {"failed": failed, "ignored": sum(1 for m in matches if not m.counts)}
    fail_job = next((m for m in matches if m.action == FAIL_JOB), None)
    if fail_job is not None:
        out["condition"] = ("Failed", "PodFailurePolicy", fail_job.message)
    elif not failed_pods:
        out["condition"] = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
    elif failed > int(job["spec"].get("backoffLimit", DEFAULT_BACKOFF_LIMIT)):
        out["condition"] = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    return out
