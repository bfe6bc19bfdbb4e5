"""spec.tracking: validation errors that name the field, the CRD's CEL rules saying the same, and the training
pod's env: tracker credentials only as secretKeyRefs (never a value, never argv, never in the trainer config),
and none in the pre-flight pod."""

from __future__ import annotations

import json

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.tracking import TrackingSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.finetunejob import desired_children, resolve_spec

from .test_builders_finetunejob import BODY, SETTINGS

MLFLOW = {"trackingUri": "http://mlflow.mlflow.svc:5000", "experiment": "support",
          "credentialsSecretRef": {"name": "mlflow-creds", "usernameKey": "user", "passwordKey": "pass"}}
WANDB = {"project": "support-bot", "entity": "ml-team", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}}


def _problems(tracking: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(FineTuneJobSpec, {**BODY["spec"], "tracking": tracking})
    return info.value.problems


@pytest.mark.parametrize("tracking, problem", [
    ({"mlflow": {**MLFLOW, "trackingUri": "mlflow.svc:5000"}}, "spec.tracking.mlflow.trackingUri: "),
    ({"mlflow": {**MLFLOW, "trackingUri": "file:///tmp/mlruns"}}, "spec.tracking.mlflow.trackingUri: "),
    ({"mlflow": {**MLFLOW, "trackingUri": "https://user:secret@mlflow.example.com"}}, "spec.tracking.mlflow.trackingUri: "),
    ({"wandb": {**WANDB, "host": "https://key@wandb.example.com"}}, "spec.tracking.wandb.host: "),
    ({"mlflow": {**MLFLOW, "credentialsSecretRef": {"name": "c", "usernameKey": "u"}}},
     "spec.tracking.mlflow.credentialsSecretRef: usernameKey and passwordKey go together"),
    ({"mlflow": {**MLFLOW, "credentialsSecretRef": {"name": "c", "usernameKey": "u", "passwordKey": "p", "tokenKey": "t"}}},
     "spec.tracking.mlflow.credentialsSecretRef: set tokenKey, or usernameKey and passwordKey"),
    ({"mlflow": {**MLFLOW, "credentialsSecretRef": {"name": "c"}}},
     "spec.tracking.mlflow.credentialsSecretRef: set tokenKey, or usernameKey and passwordKey"),
    ({"mlflow": {"experiment": "x"}}, "spec.tracking.mlflow.trackingUri: required"),
    ({"wandb": {"project": "p"}}, "spec.tracking.wandb: apiKeySecretRef is required when mode is online"),
    ({"wandb": {**WANDB, "mode": "cloud"}}, "spec.tracking.wandb.mode: "),
    ({"wandb": {**WANDB, "project": "a/b"}}, "spec.tracking.wandb.project: "),
    ({"tensorboard": {"enabled": True, "dir": "/x"}}, "spec.tracking.tensorboard.dir: "),
])
def test_bad_tracking_is_refused_naming_the_field(tracking, problem):
    problems = _problems(tracking)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_offline_wandb_needs_no_key_and_token_auth_is_enough():
    spec = parse(FineTuneJobSpec, {**BODY["spec"], "tracking": {
        "wandb": {"project": "p", "mode": "offline"}, "tensorboard": {},
        "mlflow": {"trackingUri": "https://mlflow.example.com/prefix", "credentialsSecretRef": {"name": "c", "tokenKey": "t"}}}})
    assert spec.tracking.wandb.api_key_secret_ref is None and spec.tracking.tensorboard.enabled


def test_crd_rules_match_the_validators():
    """The CEL rules the API server checks, evaluated on the same inputs as the pydantic validators."""
    import celpy

    schema = TrackingSpec.model_json_schema()
    rules = {name: schema["$defs"][name]["x-kubernetes-validations"] for name in ("MlflowCredentials", "WandbTracking")}
    env = celpy.Environment()
    cases = {"MlflowCredentials": [({"name": "c", "tokenKey": "t"}, True), ({"name": "c", "usernameKey": "u", "passwordKey": "p"}, True),
                                   ({"name": "c", "usernameKey": "u"}, False), ({"name": "c"}, False),
                                   ({"name": "c", "tokenKey": "t", "usernameKey": "u", "passwordKey": "p"}, False)],
             "WandbTracking": [({"project": "p", "mode": "offline"}, True), ({"project": "p", "mode": "online"}, False),
                               ({**WANDB, "mode": "online"}, True)]}
    for model, inputs in cases.items():
        for value, valid in inputs:
            cel_ok = all(env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(value)}) for r in rules[model])
            pydantic_ok = True
            try:
                getattr(__import__("kubetune.api.tracking", fromlist=[model]), model).model_validate(value)
            except ValueError:
                pydantic_ok = False
            assert (bool(cel_ok), pydantic_ok) == (valid, valid), (model, value)


def test_training_pod_gets_tracker_credentials_by_secret_ref_only():
    spec = {**BODY["spec"], "tracking": {"mlflow": MLFLOW, "wandb": WANDB, "tensorboard": {}}}
    resolved = resolve_spec(parse(FineTuneJobSpec, spec), SETTINGS)
    children = desired_children({**BODY, "spec": spec}, resolved, SETTINGS, create_job=True, keep_config=False,
                                create_preflight=True)
    objects = {c.manifest["metadata"]["name"]: c.manifest for c in children}
    job, preflight = objects["support-bot-train"], objects["support-bot-preflight"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    tracker_env = [e for e in container["env"] if e["name"].startswith(("MLFLOW_", "WANDB_"))]
    assert tracker_env == [
        {"name": "MLFLOW_TRACKING_USERNAME", "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "user"}}},
        {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": "pass"}}},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}},
    ]
    assert container["args"] == ["--config", "/etc/kubetune/config.json"]
    (pre,) = preflight["spec"]["template"]["spec"]["containers"]
    assert not [e for e in pre["env"] if e["name"].startswith(("MLFLOW_", "WANDB_"))]  # it tracks nothing
    # the trainer config carries the references, the URIs and the names: nothing a Secret holds
    config = json.loads(objects["support-bot-trainer-config"]["data"]["config.json"])
    assert config["spec"]["tracking"]["mlflow"]["credentialsSecretRef"] == MLFLOW["credentialsSecretRef"]
    assert config["spec"]["tracking"]["wandb"]["apiKeySecretRef"] == WANDB["apiKeySecretRef"]


def test_token_auth_env():
    spec = {**BODY["spec"], "tracking": {"mlflow": {**MLFLOW, "credentialsSecretRef": {"name": "tok", "tokenKey": "token"}}}}
    resolved = resolve_spec(parse(FineTuneJobSpec, spec), SETTINGS)
    job = desired_children({**BODY, "spec": spec}, resolved, SETTINGS, create_job=True, keep_config=False)[-1].manifest
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"].startswith("MLFLOW_")] == [
        {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]


def test_the_trainers_report_with_tracking_links_fits_the_crds_status_schema():
    """The merge patch the trainer sends (ProgressReport) is accepted by the FineTuneJob CRD's status schema, unknown
    fields refused as the API server's strict field validation does (the examples' strict JSON Schema)."""
    import jsonschema

    from kubetune.api.crd import all_crds
    from kubetune.api.finetunejob import Progress
    from kubetune.api.progress import ProgressReport, TrainerStatus
    from kubetune.api.tracking import RunLink, TensorBoardLink, TrackingStatus

    from ..examples.test_examples import strict

    schema = strict(all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    tracking = TrackingStatus(mlflow=RunLink(run_id="abc", url="http://mlflow:5000/#/experiments/1/runs/abc"),
                              wandb=RunLink(run_id="ml-job-1234", message="log event failed (...)"),
                              tensorboard=TensorBoardLink(uri="s3://out/ml/job/tensorboard/"))
    body = ProgressReport(status=TrainerStatus(progress=Progress(step=3), tracking=tracking)).body()
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "job"},
           "spec": parse(FineTuneJobSpec, BODY["spec"]).to_dict(), **body}
    jsonschema.validate(obj, schema)
    assert body["status"]["tracking"]["mlflow"] == {"runId": "abc", "url": "http://mlflow:5000/#/experiments/1/runs/abc"}
    obj["status"]["tracking"]["mlflow"]["runID"] = "typo"
    with pytest.raises(jsonschema.ValidationError, match="runID"):
        jsonschema.validate(obj, schema)
