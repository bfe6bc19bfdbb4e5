"""Pure parts of the gateway: the status mapping, model names, key Secrets, settings."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml

from kubetune.cli import main
from kubetune.gateway import jobview
from kubetune.gateway.errors import OpenAIError
from kubetune.gateway.jobs import matches, metadata_filter
from kubetune.gateway.results import step_metrics_csv
from kubetune.gateway.settings import load_settings
from kubetune.gateway.tenancy import key_hash, tenant_of_secret


def ftj(conditions=(), **spec):
    return {"metadata": {"name": "ftjob-" + "a" * 24, "namespace": "team-a"}, "spec": spec,
            "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": ""} for t, s, r in conditions]}}


@pytest.mark.parametrize("conds, spec, expected", [
    ((), {}, "validating_files"),
    ((("Running", "False", "Validating"), ("Failed", "False", "NoFailure")), {}, "validating_files"),
    ((("Running", "False", "Pending"), ("Succeeded", "Unknown", "Pending")), {}, "queued"),
    ((("Running", "False", "Suspended"), ("Suspended", "True", "Suspended")), {"suspend": True}, "queued"),
    ((("Running", "False", "Queued"),), {}, "queued"),
    ((("Running", "True", "Training"),), {}, "running"),
    ((("Running", "False", "Cancelling"), ("Failed", "False", "NoFailure")), {"cancel": True}, "cancelled"),
    ((("Failed", "True", "Cancelled"),), {"cancel": True}, "cancelled"),
    ((("Failed", "True", "OOMKilled"),), {}, "failed"),
    ((("Failed", "True", "OOMKilled"),), {"cancel": True}, "failed"),  # it failed before the cancel took effect
    ((("Succeeded", "True", "Completed"), ("Failed", "False", "NoFailure")), {}, "succeeded"),
])
def test_status_mapping(conds, spec, expected):
    assert jobview.openai_status(ftj(conds, **spec)) == expected


def test_failed_job_error_names_the_data():
    job = ftj([("Failed", "True", "ValidationFailed")])
    job["status"]["conditions"][0]["message"] = "train.jsonl:3: messages[1].role ..."
    job["spec"] = {"hyperparameters": {}}
    job["metadata"]["annotations"] = {jobview.ANNOTATION: json.dumps({"model": "m", "training_file": "file-x"})}
    error = jobview.job_object(job)["error"]
    assert error == {"code": "invalid_training_file", "message": "train.jsonl:3: messages[1].role ...", "param": "training_file"}


def test_job_shows_the_hyperparameters_that_run_a_templates_included():
    """status.effectiveSpec (the template applied) wins over the spec as created; before the operator wrote it,
    the spec as created."""
    job = ftj([("Running", "True", "Training")], hyperparameters={"epochs": 3})
    job["metadata"]["annotations"] = {jobview.ANNOTATION: json.dumps({"model": "m", "training_file": "file-x"})}
    assert (jobview.job_object(job)["hyperparameters"]["n_epochs"], jobview.job_object(job)["seed"]) == (3, 42)
    job["status"]["effectiveSpec"] = {"hyperparameters": {"epochs": 2, "batchSize": 4, "seed": 7}}
    shown = jobview.job_object(job)
    assert (shown["hyperparameters"]["n_epochs"], shown["hyperparameters"]["batch_size"], shown["seed"]) == (2, 4, 7)
    assert shown["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2


def test_model_name_round_trip():
    job_id = "ftjob-" + "b" * 24
    name = jobview.fine_tuned_model("tiny-chat", "team-a", None, job_id)
    assert name == f"ft:tiny-chat:team-a::{job_id}" and jobview.job_of_model(name) == job_id
    assert jobview.job_of_model("tiny-chat") is None and jobview.job_of_model("ft:a:b:c:ftjob-x") is None


def test_cli_key_secret_holds_only_the_hash():
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["gateway", "key", "--tenant", "team-a", "--model", "tiny-chat", "--max-concurrent-jobs", "3"]) == 0
    key = err.getvalue().rsplit(": ", 1)[1].strip()
    secret = yaml.safe_load(out.getvalue())
    assert key not in out.getvalue()
    tenant = tenant_of_secret(secret, key_hash(key))
    assert tenant.namespace == "team-a" and tenant.limits.max_concurrent_jobs == 3
    assert tenant.limits.allowed_base_models == ["tiny-chat"]
    assert tenant_of_secret(secret, key_hash(key + "x")) is None


def test_settings_refuse_unknown_keys(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text("filesUri: s3://b/files\nbaseModel: {}\n")
    with pytest.raises(SystemExit, match="baseModel"):
        load_settings(path)
    path.write_text("filesUri: s3://b/files\nbaseModels: {tiny: {uri: 's3://m/tiny', resources: {gpus: 1}}}\n")
    assert load_settings(path).base_models["tiny"].resources.gpus == 1


def test_upload_validation_reads_openais_preference_format(tmp_path):
    """A DPO file in OpenAI's own preference shape passes upload validation as preference data (then method dpo);
    a broken record is refused with file:line: field."""
    from kubetune.gateway.files import validate
    from kubetune_trainer.errors import DataError

    def record(i: int, **changes) -> dict:
        return {"input": {"messages": [{"role": "user", "content": f"Say {i}"}], "tools": [], "parallel_tool_calls": True},
                "preferred_output": [{"role": "assistant", "content": f"{i}"}],
                "non_preferred_output": [{"role": "assistant", "content": "no"}], **changes}

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(record(i)) + "\n" for i in range(12)))
    assert validate(path) == ("preference", 12)
    path.write_text("".join(json.dumps(record(i, non_preferred_output=[]) if i == 3 else record(i)) + "\n" for i in range(12)))
    with pytest.raises(DataError) as info:
        validate(path)
    assert info.value.problems == [
        "pairs.jsonl:4: non_preferred_output must be a list holding exactly one assistant message (got 0 messages)"]


@pytest.mark.parametrize("query, expected, picked", [
    ([], False, ["a", "b", "c"]),
    ([("limit", "5")], False, ["a", "b", "c"]),
    ([("metadata[team]", "growth"), ("metadata[tier]", "")], {"team": "growth", "tier": ""}, ["a"]),
    ([("metadata[team]", "growth")], {"team": "growth"}, ["a", "c"]),
    ([("metadata", "null")], None, ["b"]),
])
def test_job_list_metadata_filter(query, expected, picked):
    """OpenAI's documented filter forms (openai types/fine_tuning/job_list_params.py)."""
    wanted = metadata_filter(query)
    assert wanted == expected
    jobs = [{"id": "a", "metadata": {"team": "growth", "tier": ""}}, {"id": "b", "metadata": None},
            {"id": "c", "metadata": {"team": "growth"}}]
    assert [j["id"] for j in jobs if matches(j, wanted)] == picked


@pytest.mark.parametrize("query", [[("metadata", "null"), ("metadata[team]", "x")], [("metadata", "x")],
                                   [("metadata[]", "x")]])
def test_job_list_metadata_filter_refuses_mixed_forms(query):
    with pytest.raises(OpenAIError) as err:
        metadata_filter(query)
    assert err.value.status == 400 and "metadata" in str(err.value.message)


def test_step_metrics_csv_merges_training_and_evaluation_logs_by_step():
    log = [{"step": 5, "loss": 2.0, "learning_rate": 1e-4, "epoch": 0.5}, {"step": 10, "loss": 1.0},
           {"step": 10, "eval_loss": 1.5, "eval_mean_token_accuracy": 0.6}, {"train_runtime": 12.0}]
    assert step_metrics_csv(log).splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate",
        "5,2.0,,,,0.0001", "10,1.0,,1.5,0.6,"]
