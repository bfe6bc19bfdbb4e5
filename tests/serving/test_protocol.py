"""The operator <-> sidecar contract (kubetune.api.sidecar): desired-set parsing, status shape; the sidecar's diffing."""

from __future__ import annotations

import pytest
from kubetune.api.sidecar import AdapterReport, DesiredAdapter, DesiredSet, SidecarStatus
from kubetune_serving.protocol import SyncPlan, plan_resolve, plan_sync, sha_from_served_path
from pydantic import ValidationError

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def adapter(name: str, sha: str | None) -> DesiredAdapter:
    return DesiredAdapter(name=name, uri=f"s3://models/{name}", manifest_sha256=sha)


def test_desired_set_parses_the_wire_form() -> None:
    parsed = DesiredSet.model_validate_json(
        '{"generation": 3, "adapters": [{"name": "a", "uri": "s3://models/a", "manifestSha256": "' + SHA_A + '"}]}'
    )
    assert parsed == DesiredSet(generation=3, adapters=[adapter("a", SHA_A)])
    assert parsed.to_dict() == {"generation": 3,
                                "adapters": [{"name": "a", "uri": "s3://models/a", "manifestSha256": SHA_A}]}


def test_desired_set_accepts_unpinned_adapters() -> None:
    # What the operator writes for spec.adapters[].uri: it cannot read the manifest, so no sha.
    parsed = DesiredSet.model_validate_json(
        '{"generation": 2, "adapters": [{"name": "a", "uri": "s3://models/a", "manifestSha256": null},'
        ' {"name": "b", "uri": "s3://models/b"}]}'
    )
    assert parsed == DesiredSet(generation=2, adapters=[adapter("a", None), adapter("b", None)])
    assert [a.pinned for a in parsed.adapters] == [False, False]
    assert adapter("c", SHA_C).pinned


@pytest.mark.parametrize(("payload", "error"), [
    ({"generation": 1, "adapters": [], "extra": 1}, "extra\n  Extra inputs are not permitted"),
    ({"generation": 1, "adapters": [{"name": "A_b", "uri": "s3://m/a", "manifestSha256": SHA_A}]},
     "adapters.0.name\n  String should match pattern"),
    ({"generation": 1, "adapters": [{"name": "a", "uri": "http://x/a", "manifestSha256": SHA_A}]},
     "adapters.0.uri\n  String should match pattern"),
    ({"generation": 1, "adapters": [{"name": "a", "uri": "s3://m/a", "manifestSha256": "abc"}]},
     "adapters.0.manifestSha256\n  String should match pattern"),
    ({"generation": 1, "adapters": [{"name": "a", "uri": "s3://m/a", "manifestSha256": SHA_A},
                                    {"name": "a", "uri": "s3://m/b", "manifestSha256": SHA_B}]},
     "Value error, adapters: duplicate name(s) a"),
    ({"adapters": []}, "generation\n  Field required"),
])
def test_desired_set_is_strict(payload: dict, error: str) -> None:
    with pytest.raises(ValidationError) as info:
        DesiredSet.model_validate(payload)
    assert error in str(info.value)


def test_plan_loads_missing_unloads_extra_keeps_same_sha() -> None:
    plan = plan_sync([adapter("b", SHA_B), adapter("a", SHA_A), adapter("c", SHA_C)],
                     served={"a": SHA_A, "old": SHA_C, "b": SHA_A})
    assert plan == SyncPlan(unload=["old"], load=[adapter("b", SHA_B), adapter("c", SHA_C)], keep=["a"])


def test_plan_reloads_unknown_origin_and_skips_blocked() -> None:
    # "x" was loaded by someone else (--lora-modules): its sha is unknown, so it is loaded again from
    # the verified cache; "c" has a load in flight (blocked) and is neither loaded nor unloaded.
    plan = plan_sync([adapter("x", SHA_A), adapter("c", SHA_C)], served={"x": None}, blocked={"c"})
    assert plan == SyncPlan(unload=[], load=[adapter("x", SHA_A)], keep=[])


def test_plan_waits_for_unresolved_unpinned_adapters() -> None:
    # "u" is unpinned and its manifest not read yet: not loaded, not kept (even when vLLM serves a
    # sha or an unknown origin under that name), and not unloaded either.
    plan = plan_sync([adapter("u", None), adapter("v", None), adapter("a", SHA_A)],
                     served={"u": SHA_B, "v": None, "old": SHA_C})
    assert plan == SyncPlan(unload=["old"], load=[adapter("a", SHA_A)], keep=[])
    # Once resolved (the sidecar passes it pinned to the sha it read), it is diffed like any other.
    plan = plan_sync([adapter("u", SHA_B), adapter("v", SHA_C)], served={"u": SHA_B, "v": None})
    assert plan == SyncPlan(unload=[], load=[adapter("v", SHA_C)], keep=["u"])


def test_plan_resolve_reads_new_stale_and_failed_manifests() -> None:
    unpinned = {"new": None, "fresh": 95.0, "stale": 89.0, "exactly": 90.0, "busy": None, "backoff": 10.0}
    assert plan_resolve(unpinned, now=100.0, interval=10.0, blocked={"busy", "backoff"}) == ["exactly", "new", "stale"]
    assert plan_resolve({}, now=1.0, interval=10.0) == []


def test_plan_of_empty_desired_set_unloads_everything() -> None:
    assert plan_sync([], served={"a": SHA_A, "b": None}) == SyncPlan(unload=["a", "b"], load=[], keep=[])


@pytest.mark.parametrize(("path", "sha"), [
    (f"/cache/{SHA_A}/adapter", SHA_A),
    (f"/cache/{SHA_A}", SHA_A),
    (f"/cache/{SHA_A}x/adapter", None),
    (f"/elsewhere/{SHA_A}/adapter", None),
    ("/cache/.partial-abc/adapter", None),
    (None, None),
])
def test_sha_from_served_path(path: str | None, sha: str | None) -> None:
    assert sha_from_served_path(path, "/cache/") == sha


def test_status_wire_form() -> None:
    status = SidecarStatus(generation=4, vllm_ready=True, adapters=[
        AdapterReport(name="a", uri="s3://m/a", manifest_sha256=SHA_A, state="Ready", loaded_at="2026-11-23T00:00:00Z"),
        AdapterReport(name="u", uri="s3://m/u", manifest_sha256=None, state="Loading", message="reading manifest.json"),
    ])
    assert status.wire() == {  # `trial` only on trial entries (kubetune.api.promotion)
        "generation": 4, "vllmReady": True, "message": None,
        "adapters": [{"name": "a", "uri": "s3://m/a", "manifestSha256": SHA_A, "state": "Ready", "message": None,
                      "loadedAt": "2026-11-23T00:00:00Z"},
                     {"name": "u", "uri": "s3://m/u", "manifestSha256": None, "state": "Loading",
                      "message": "reading manifest.json", "loadedAt": None}],
    }
