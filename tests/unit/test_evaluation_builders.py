"""spec.evaluation in the training pod: the judge's key as a secretKeyRef env var (never in the trainer config or
argv, not in the pre-flight pod), and the prompt sets' pvc:// and configmap:// URIs mounted read-only like the
dataset's; file:// prompt sets refused outside `kubetune local`. Pure builders: whole containers and volumes."""

from __future__ import annotations

import copy
import json

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.finetunejob import build_children, resolve_spec
from kubetune.builders.preflight import build_preflight_job
from kubetune.config import OperatorSettings

SETTINGS = OperatorSettings(trainer_image="registry.example/kubetune/trainer:1.0", default_output_uri="s3://adapters/prod",
                            s3_endpoint="http://minio.storage:9000", storage_secret="platform-s3")
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "router", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"},
                 "resources": {"gpus": 1},
                 "evaluation": {"prompts": "pvc://eval-data/tickets/prompts.jsonl", "regressionSet": "configmap://general/set.jsonl",
                                "metrics": ["exact_match", "judge"],
                                "judge": {"endpoint": "http://judge.ml.svc:8000/v1", "model": "judge", "rubric": "Right queue.",
                                          "apiKeySecretRef": {"name": "judge-key", "key": "token"}}}}}


def _built(body=BODY, settings=SETTINGS):
    resolved = resolve_spec(parse(FineTuneJobSpec, body["spec"]), settings)
    children = build_children(body, resolved, settings)
    return children, build_preflight_job(children[-1], "router-preflight", resolved, settings)


def test_the_judge_key_reaches_only_the_training_container_by_secret_ref():
    children, preflight = _built()
    config_map, job = children[0], children[-1]
    container = job["spec"]["template"]["spec"]["containers"][0]
    judge = [e for e in container["env"] if e["name"] == "KUBETUNE_JUDGE_API_KEY"]
    assert judge == [{"name": "KUBETUNE_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": "token"}}}]
    assert "judge-key" not in json.dumps(container["args"])
    config = json.loads(next(iter(config_map["data"].values())))
    assert config["spec"]["evaluation"]["judge"]["apiKeySecretRef"] == {"name": "judge-key", "key": "token"}  # a reference only
    pre = preflight["spec"]["template"]["spec"]["containers"][0]
    assert not [e for e in pre["env"] if e["name"] == "KUBETUNE_JUDGE_API_KEY"]
    assert [e for e in pre["env"] if e["name"] == "HOME"]  # the rest of the env is the training container's


def test_prompt_sets_are_mounted_read_only_like_the_data():
    children, _ = _built()
    pod = children[-1]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = next(v for v in volumes.values() if v.get("persistentVolumeClaim", {}).get("claimName") == "eval-data")
    assert claim["persistentVolumeClaim"]["readOnly"] is True and mounts[claim["name"]]["readOnly"] is True
    configmap = next(v for v in volumes.values() if v.get("configMap", {}).get("name") == "general")
    assert [i["key"] for i in configmap["configMap"]["items"]] == ["set.jsonl"] and mounts[configmap["name"]]["readOnly"]


def test_file_prompt_sets_are_refused_on_a_cluster():
    body = copy.deepcopy(BODY)
    body["spec"]["evaluation"]["prompts"] = "file:///home/me/prompts.jsonl"
    with pytest.raises(SpecError) as err:
        _built(body)
    assert "spec.evaluation.prompts: 'file:///home/me/prompts.jsonl': file:// URIs are for `kubetune local` only" in str(err.value)
