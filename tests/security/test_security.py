"""Security by default, checked on everything that would run: the chart's objects and every object the
operator builds (real builders, platform defaults from the chart's values).

That no secret value leaks is shown where secret values exist: test_no_leaks.py puts canaries into real
Secrets and the operator's environment, runs a whole local FineTuneJob + ModelDeployment and searches
every object, status, event, log, argv and /status for them. Here only the operator's environment can
hold one (test_operator_environment_secrets_never_leak_into_children)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.validation import SpecError, parse
from kubetune.config import OperatorSettings

from ..chart.helm import ROOT, load_values_file, objects
from .objects import CANARY, FTJ_SPEC, MD_SPEC, finetunejob_children, finetunejob_preflight, modeldeployment_children
from .pss import pod_spec_of, violations

PLATFORM_VALUES = load_values_file(ROOT / "examples" / "platform-values.yaml")
# Env var names whose value is a credential: they may only come from a Secret (valueFrom.secretKeyRef).
SECRET_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "VLLM_API_KEY"}


def everything() -> dict[str, list[dict[str, Any]]]:
    return {
        "chart (defaults)": objects(),
        "chart (platform values)": objects(PLATFORM_VALUES),
        "FineTuneJob": finetunejob_children(),
        "FineTuneJob (2 nodes)": finetunejob_children(nodes=2),
        "FineTuneJob (every option)": finetunejob_children({**FTJ_SPEC, "scheduling": {
            "priorityClassName": "high", "nodeSelector": {"gpu": "h100"}, "tolerations": [{"operator": "Exists"}],
            "queueName": "team-a"}, "activeDeadlineSeconds": 3600, "suspend": True}),
        "FineTuneJob pre-flight": finetunejob_preflight({**FTJ_SPEC, "scheduling": {"queueName": "team-a"}}),
        "ModelDeployment": modeldeployment_children(),
    }


def walk(node: Any, path: str = ""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("source", everything())
def test_every_pod_meets_the_restricted_profile(source):
    workloads = [o for o in everything()[source] if pod_spec_of(o) is not None]
    assert workloads
    for workload in workloads:
        assert violations(pod_spec_of(workload)) == [], f"{source}: {workload['kind']}/{workload['metadata']['name']}"


@pytest.mark.parametrize("source", everything())
def test_no_host_access_no_privilege(source):
    for obj in everything()[source]:
        for path, node in walk(obj):
            if isinstance(node, dict):
                assert "hostPath" not in node, f"{source}: {obj['kind']}{path}"
                for key in ("privileged", "hostNetwork", "hostPID", "hostIPC", "allowPrivilegeEscalation"):
                    assert node.get(key) in (None, False), f"{source}: {obj['kind']}{path}.{key}"
                assert "hostPort" not in node, f"{source}: {obj['kind']}{path}"


@pytest.mark.parametrize("source", everything())
def test_credentials_come_only_from_secrets(source):
    for obj in everything()[source]:
        spec = pod_spec_of(obj)
        for container in (spec or {}).get("containers", []):
            for env in container.get("env", []):
                if env["name"] in SECRET_ENV:
                    assert set(env) == {"name", "valueFrom"} and set(env["valueFrom"]) == {"secretKeyRef"}, env
        if obj["kind"] == "Secret":
            pytest.fail(f"{source} creates a Secret")


def test_secret_references_reach_the_pods_by_name_only():
    job = next(o for o in finetunejob_children() if o["kind"] == "Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "kubetune-storage", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    deployment = next(o for o in modeldeployment_children() if o["kind"] == "Deployment")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "support-api-key", "key": "key"}}


def test_operator_environment_secrets_never_leak_into_children(monkeypatch):
    """Even if the operator's own environment held credentials, nothing it builds carries them."""
    for name in SECRET_ENV:
        monkeypatch.setenv(name, CANARY)
    monkeypatch.setenv("KUBETUNE_STORAGE_SECRET", "kubetune-storage")
    monkeypatch.setenv("KUBETUNE_DEFAULT_OUTPUT_URI", "s3://models/adapters")
    settings = OperatorSettings.from_env()
    built = finetunejob_children(settings=settings) + modeldeployment_children(settings=settings)
    assert CANARY not in json.dumps(built)


def test_configmaps_hold_no_credentials():
    config_maps = [o for source in everything().values() for o in source if o["kind"] == "ConfigMap"]
    assert len(config_maps) >= 4
    for config_map in config_maps:
        text = json.dumps(config_map["data"]).lower()
        for word in ("secret_access_key", "access_key_id", "password", "hf_"):
            assert word not in text, (config_map["metadata"]["name"], word)
    trainer = TrainerConfig.model_validate_json(next(o for o in finetunejob_children() if o["kind"] == "ConfigMap")["data"]["config.json"])
    # References only: the Secret's name and key, never a value.
    assert trainer.spec.storage.credentials_secret_ref.name == "kubetune-storage"
    assert trainer.spec.hub_token_secret_ref.to_dict() == {"name": "hf-token", "key": "token"}


def test_pod_tokens_are_short_lived_and_scoped():
    for obj in finetunejob_children() + modeldeployment_children():
        spec = pod_spec_of(obj)
        if spec is None:
            continue
        assert spec["automountServiceAccountToken"] is False
        (token,) = [v for v in spec["volumes"] if "projected" in v]
        assert token["projected"]["sources"][0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
        assert spec["serviceAccountName"] != "default"


# ------------------------------------------------------------------------------------ trustRemoteCode


def vllm_argv(children, monkeypatch, capsys) -> list[str]:
    """What kubetune_serving.launch would exec, from the built Deployment's own env and args."""
    launch = pytest.importorskip("kubetune_serving.launch")
    deployment = next(o for o in children if o["kind"] == "Deployment")
    vllm = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    assert vllm["command"] == ["python", "-m", "kubetune_serving.launch"]
    for env in vllm["env"]:
        if "value" in env:
            monkeypatch.setenv(env["name"], env["value"])
    assert launch.main([*vllm["args"], "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def trainer_config(children) -> TrainerConfig:
    config_map = next(o for o in children if o["kind"] == "ConfigMap")
    return TrainerConfig.model_validate_json(config_map["data"]["config.json"])


def test_trust_remote_code_is_off_by_default(monkeypatch, capsys):
    assert parse(FineTuneJobSpec, FTJ_SPEC).base_model.trust_remote_code is False
    assert trainer_config(finetunejob_children()).spec.base_model.trust_remote_code is False
    argv = vllm_argv(modeldeployment_children(), monkeypatch, capsys)
    assert argv[argv.index("--model") + 1] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "--trust-remote-code" not in argv


def test_trust_remote_code_is_carried_only_when_set(monkeypatch, capsys):
    trusted = {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "trustRemoteCode": True}
    assert trainer_config(finetunejob_children({**FTJ_SPEC, "baseModel": trusted})).spec.base_model.trust_remote_code is True
    assert "--trust-remote-code" in vllm_argv(modeldeployment_children({**MD_SPEC, "baseModel": trusted}), monkeypatch, capsys)


# ------------------------------------------------------------------------------------ URIs and names


@pytest.mark.parametrize(("patch", "error"), [
    ({"baseModel": {"uri": "ftp://models/llama"}}, "spec.baseModel.uri: 'ftp://models/llama' is not a valid URI. Allowed schemes"),
    ({"baseModel": {"uri": "https://evil.example/model"}}, "spec.baseModel.uri: 'https://evil.example/model' is not a valid URI"),
    ({"baseModel": {"uri": "s3://models/../../etc"}}, "spec.baseModel.uri: must not contain '..' path segments"),
    ({"dataset": {"train": "gs://bucket/data.jsonl"}}, "spec.dataset.train: 'gs://bucket/data.jsonl' is not a valid data URI. Allowed schemes"),
    ({"dataset": {"train": "pvc://corpus/../other-team/data"}}, "spec.dataset.train: must not contain '..' path segments"),
    ({"output": {"uri": "s3://models/adapters/.."}}, "spec.output.uri: must not contain '..' path segments"),
    ({"output": {"uri": "https://models.example/adapters"}}, "spec.output.uri: 'https://models.example/adapters' is not a valid storage URI. Allowed schemes: s3://, pvc://"),
])
def test_finetunejob_uris_are_restricted(patch, error):
    with pytest.raises(SpecError) as err:
        parse(FineTuneJobSpec, {**FTJ_SPEC, **patch})
    assert error in str(err.value)


@pytest.mark.parametrize(("adapter", "error"), [
    ({"name": "Support", "uri": "s3://a/b"}, "spec.adapters[0].name: 'Support' must be lowercase letters, digits and '-'"),
    ({"name": "../escape", "uri": "s3://a/b"}, "spec.adapters[0].name: '../escape' must be lowercase"),
    ({"name": "team/bot", "uri": "s3://a/b"}, "spec.adapters[0].name: 'team/bot' must be lowercase"),
    ({"name": "a" * 64, "uri": "s3://a/b"}, "spec.adapters[0].name: must be at most 63 characters"),
    ({"name": "bot", "uri": "s3://adapters/../secrets"}, "spec.adapters[0].uri: must not contain '..' path segments"),
    # hf:// adapters are accepted only pinned to a commit: a branch can move under a served adapter.
    ({"name": "bot", "uri": "hf://org/adapter"}, "spec.adapters[0].uri: 'hf://org/adapter': an hf:// adapter must be pinned to a commit"),
    ({"name": "bot", "uri": "gs://bucket/adapter"}, "spec.adapters[0].uri: 'gs://bucket/adapter' is not a valid"),
])
def test_adapter_names_are_dns_labels_and_uris_stay_in_their_bucket(adapter, error):
    with pytest.raises(SpecError) as err:
        parse(ModelDeploymentSpec, {**MD_SPEC, "adapters": [adapter]})
    assert error in str(err.value)


def test_the_profile_check_catches_each_breach():
    """tests/security/pss.py itself: each way out of "restricted" is reported."""
    job = next(o for o in finetunejob_children() if o["kind"] == "Job")
    spec = pod_spec_of(job)
    container = spec["containers"][0]
    container["securityContext"].update(privileged=True, allowPrivilegeEscalation=True, readOnlyRootFilesystem=False,
                                        capabilities={"add": ["SYS_ADMIN"]}, seccompProfile={"type": "Unconfined"})
    spec["securityContext"]["runAsUser"] = 0
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/run"}})
    assert violations(spec) == [
        "hostNetwork is true",
        "volume host is a hostPath",
        "volume host has type ['hostPath'] (restricted allows ['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', "
        "'persistentVolumeClaim', 'projected', 'secret'])",
        "pod runAsUser is 0",
        "containers[trainer]: privileged",
        "containers[trainer]: allowPrivilegeEscalation is not false",
        "containers[trainer]: seccompProfile is Unconfined (needs RuntimeDefault or Localhost)",
        "containers[trainer]: capabilities do not drop ALL",
        "containers[trainer]: adds capabilities ['SYS_ADMIN']",
        "containers[trainer]: readOnlyRootFilesystem is not true",
    ]
