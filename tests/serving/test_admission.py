"""One admission check, two places: what the sidecar would reject, the operator refuses first, in the same words.

The operator admits a FineTuneJob's adapter from its status and spec (kubetune.plan.modeldeployment) before the
adapter enters the desired set; the sidecar admits the manifest.json it downloads (kubetune_serving.cache), with
the serving target the operator put on its command line. Both run kubetune.api.admission.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.api.admission import AdmissionError, ServingTarget
from kubetune.api.conditions import AdapterState
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.sidecar import DesiredAdapter
from kubetune.api.validation import parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.config import OperatorSettings
from kubetune.plan.modeldeployment import resolve_adapters
from kubetune_serving.cache import AdapterCache
from kubetune_storage import Storage
from kubetune_serving.sync import parse_args

from tests.serving.helpers import fake_adapter, publish_adapter

SERVED = "hf://Qwen/Qwen2.5-0.5B-Instruct"
MD_SPEC = {"baseModel": {"uri": SERVED, "revision": "main"}, "vllm": {"maxLoraRank": 32},
           "adapters": [{"name": "bot", "fineTuneJobRef": {"name": "bot"}}]}
SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0")

# (FineTuneJob spec.adapter, its spec.baseModel.uri, the manifest.adapter the trainer publishes for it)
CASES = {
    "dora": ({"type": "dora", "rank": 8}, SERVED, {"type": "dora", "rank": 8}),
    "rank": ({"rank": 64}, SERVED, {"rank": 64}),
    "full": ({"type": "full"}, SERVED, {"type": "full", "rank": None, "alpha": None, "targetModules": None}),
    "lm_head": ({"rank": 8, "targetModules": ["q_proj", "lm_head"]}, SERVED, {"rank": 8, "targetModules": ["lm_head", "q_proj"]}),
    "base model": ({"rank": 8}, "hf://Qwen/Qwen2.5-1.5B-Instruct", {"rank": 8}),
}


def operator_verdict(ftj_adapter: dict, trained_on: str) -> tuple[AdapterState, str | None]:
    spec = parse(ModelDeploymentSpec, MD_SPEC)
    ftj = {"metadata": {"name": "bot"}, "spec": {"baseModel": {"uri": trained_on}, "adapter": ftj_adapter},
           "status": {"conditions": [{"type": "Succeeded", "status": "True"}],
                      "adapter": {"uri": "s3://out/ml/bot", "manifestSha256": "e" * 64, "type": ftj_adapter.get("type", "lora"),
                                  **({"rank": ftj_adapter["rank"]} if "rank" in ftj_adapter else {})}}}
    [resolved] = resolve_adapters(spec, "ml", {"bot": ftj})
    return resolved.state, resolved.message


def sidecar_target() -> ServingTarget:
    """The target the operator's Deployment gives the sidecar (its command line), parsed as the sidecar does."""
    spec = resolve_spec(parse(ModelDeploymentSpec, MD_SPEC), SETTINGS)
    deployment = build_children({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
                                 "metadata": {"name": "chat", "namespace": "ml", "uid": "u"}}, spec, SETTINGS,
                                desired_set(1, []))[-1]
    sync = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "adapter-sync")
    options = parse_args(sync["args"], {})
    return ServingTarget(options.max_lora_rank, options.base_model_uri, options.base_model_revision)


def sidecar_verdict(tmp_path: Path, manifest_adapter: dict, trained_on: str) -> str | None:
    folder = tmp_path / "pub"
    sha = publish_adapter(fake_adapter(tmp_path), folder, base_model_uri=trained_on, adapter=manifest_adapter)
    cache = AdapterCache(tmp_path / "cache", Storage({}), sidecar_target())
    try:
        cache.fetch(DesiredAdapter(name="bot", uri=f"file://{folder}", manifest_sha256=sha))
    except AdmissionError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_operator_refuses_what_the_sidecar_rejects_with_the_same_message(tmp_path: Path, case: str) -> None:
    ftj_adapter, trained_on, manifest_adapter = CASES[case]
    rejected = sidecar_verdict(tmp_path, manifest_adapter, trained_on)
    assert rejected is not None, f"{case}: the sidecar admitted it"
    assert operator_verdict(ftj_adapter, trained_on) == (AdapterState.REJECTED, rejected)


def test_both_admit_a_servable_lora(tmp_path: Path) -> None:
    assert sidecar_verdict(tmp_path, {"rank": 8}, SERVED) is None
    assert operator_verdict({"rank": 8}, SERVED) == (AdapterState.LOADING, None)


def test_dora_is_refused_before_any_pod_sees_it() -> None:
    state, message = operator_verdict({"type": "dora"}, SERVED)
    assert state == AdapterState.REJECTED
    assert message == ("adapter type is 'dora', but vLLM cannot serve DoRA adapters (only lora, qlora): set the "
                       "FineTuneJob's spec.output.mergedModel: true and serve the merged model it publishes as "
                       "spec.baseModel of a ModelDeployment")
