"""/v1/fine_tuning/jobs with the official openai client, against the real kopf operator.

Where a job must train, the test plays the Job controller and kubelet (tests/e2e/harness.py play_*: the pod, its
status, the Job's status) and the trainer (its status reports with its own ServiceAccount token, as
kubetune_trainer.reporting does; a checkpoint folder with the Trainer's trainer_state.json in S3), and says so.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob

from ..e2e.harness import job_condition, running, terminated, wait_for
from ..e2e.rbac import report_as_trainer
from .data import chat_file, preference_file


def upload(client, content=None, name="train.jsonl") -> str:
    return client.files.create(file=(name, content or chat_file()), purpose="fine-tune").id


def test_create_list_retrieve_pause_resume_cancel(stack, operator):
    client = stack.tenant("team-a")
    file_id = upload(client)
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=file_id, suffix="adder", seed=7,
                                         hyperparameters={"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5},
                                         metadata={"team": "growth"})
    assert isinstance(job, FineTuningJob)
    assert job.id.startswith("ftjob-") and job.model == "tiny-chat" and job.training_file == file_id
    assert job.status == "validating_files" and job.fine_tuned_model is None
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.hyperparameters.learning_rate_multiplier == 0.5 and job.seed == 7
    assert job.metadata == {"team": "growth"} and job.method.type == "supervised"

    cluster = stack.cluster["team-a"]
    ftj = cluster.ftj(job.id)  # the same FineTuneJob a kubectl user would create
    store = stack.storage.open(stack.settings.files_uri)
    assert ftj["spec"]["dataset"]["train"] == store.uri_of(f"team-a/{file_id}/data/train.jsonl")
    assert ftj["spec"]["baseModel"] == {"uri": "s3://models/tiny-chat", "trustRemoteCode": False}
    hp = ftj["spec"]["hyperparameters"]  # with the CRD's defaults for the rest
    assert (hp["epochs"], hp["learningRate"], hp["seed"], "batchSize" in hp) == (2, "0.0001", 7, False)  # 0.5 x SFT's 2e-4
    assert ftj["spec"]["resources"]["gpus"] == 1
    # The operator takes it from there: its training Job, and a status the gateway maps.
    wait_for(lambda: cluster.job(f"{job.id}-train"), what="training Job")
    assert wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "queued", what="queued")

    second = client.fine_tuning.jobs.create(model="tiny-chat", training_file=file_id)
    listed = client.fine_tuning.jobs.list()
    assert [j.id for j in listed.data] in ([second.id, job.id], [job.id, second.id])
    first_page = client.fine_tuning.jobs.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1, after=first_page.data[0].id).data] == \
        [j.id for j in listed.data if j.id != first_page.data[0].id]
    # OpenAI's metadata filter, sent by the SDK as metadata[k]=v (all pairs must match) or metadata=null.
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "growth"}).data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "growth", "x": "y"}).data == []
    assert [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata": "null"}).data] == [second.id]

    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "queued" and cluster.ftj(job.id)["spec"]["suspend"] is True
    cluster.wait_condition(job.id, "Suspended", "True", "Suspended")
    wait_for(lambda: any(e.message.startswith("Suspended:") for e in client.fine_tuning.jobs.list_events(job.id).data),
             what="a Suspended event")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(second.id)  # not paused
    client.fine_tuning.jobs.resume(job.id)
    assert cluster.ftj(job.id)["spec"]["suspend"] is False
    cluster.wait_condition(job.id, "Suspended", "False")

    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cluster.ftj(job.id)["spec"]["cancel"] is True
    cluster.wait_condition(job.id, "Failed", "True", "Cancelled")
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "cancelled" and done.error is None and done.finished_at is not None
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[-1].message == f"Created fine-tuning job: {job.id}"  # newest first
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert any(e.message.startswith("Cancelled:") for e in events)


def test_dpo_method_and_file_checks(stack, operator):
    client = stack.tenant("team-a")
    chat, pairs = upload(client), upload(client, preference_file(), "pairs.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=pairs,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    method = stack.cluster["team-a"].ftj(job.id)["spec"]["method"]
    assert (method["type"], method["dpo"]["beta"]) == ("dpo", "0.2")
    with pytest.raises(openai.BadRequestError) as err:  # chat data cannot train DPO
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=chat, method={"type": "dpo"})
    assert err.value.body["param"] == "training_file" and "preference" in err.value.body["message"]
    few = upload(client, chat_file(3), "few.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=few)
    assert "has 3 example(s), but must have at least 10" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=chat)
    assert err.value.body["param"] == "model" and "tiny-chat" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file="file-" + "x" * 24)
    assert err.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=chat, hyperparameters={"n_epochs": 0})
    assert "n_epochs" in err.value.body["message"]


def test_limits_403_and_429(stack, operator):
    a, b = stack.tenant("team-a"), stack.tenant("team-b")
    file_b = upload(b)
    with pytest.raises(openai.PermissionDeniedError) as err:  # team-b may not fine-tune big-chat
        b.fine_tuning.jobs.create(model="big-chat", training_file=file_b)
    assert err.value.body["code"] == "model_not_allowed" and err.value.body["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError) as err:  # nor use DPO
        b.fine_tuning.jobs.create(model="tiny-chat", training_file=file_b, method={"type": "dpo"})
    assert err.value.body["code"] == "method_not_allowed"
    with pytest.raises(openai.PermissionDeniedError) as err:  # team-a may use big-chat, but not its 4 GPUs
        a.fine_tuning.jobs.create(model="big-chat", training_file=upload(a))
    assert err.value.body["code"] == "gpu_limit" and "4 GPUs" in err.value.body["message"]

    first = b.fine_tuning.jobs.create(model="tiny-chat", training_file=file_b)
    with pytest.raises(openai.RateLimitError) as err:  # team-b: one job at a time
        b.fine_tuning.jobs.create(model="tiny-chat", training_file=file_b)
    assert err.value.body["type"] == "rate_limit_error" and err.value.body["code"] == "concurrent_jobs_limit"
    b.fine_tuning.jobs.cancel(first.id)
    assert b.fine_tuning.jobs.create(model="tiny-chat", training_file=file_b).status == "validating_files"
    assert len(stack.cluster["team-b"].custom.list_namespaced_custom_object(
        "kubetune.io", "v1alpha1", "team-b", "finetunejobs")["items"]) == 2


def test_succeeded_with_events_and_checkpoints(stack, operator, emulator, tmp_path):
    """Plays the Job controller and kubelet (pod running, then exit 0 and the Job complete) and the trainer (progress
    and checkpoints reported to status with its ServiceAccount token; the checkpoint's trainer_state.json in S3)."""
    client = stack.tenant("team-a")
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload(client), suffix="adder")
    cluster = stack.cluster["team-a"]
    k8s_job = wait_for(lambda: cluster.job(f"{job.id}-train"), what="training Job")
    cluster.play_job_status(f"{job.id}-train", {"active": 1, "startTime": "2026-11-23T08:00:00Z"})
    cluster.play_pod(f"{job.id}-train", f"{job.id}-train-abcde", running())
    cluster.wait_condition(job.id, "Running", "True", "Training")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    ckpt_uri = f"{stack.settings.files_uri.rsplit('/', 1)[0]}/adapters/team-a/{job.id}/checkpoints/00000020"
    log = [{"step": 10, "loss": 2.5, "mean_token_accuracy": 0.4}, {"step": 20, "loss": 1.25, "mean_token_accuracy": 0.7},
           {"step": 20, "eval_loss": 1.5}, {"step": 30, "loss": 0.5}]
    stack.storage.open(ckpt_uri).write_bytes("trainer_state.json", json.dumps({"log_history": log[:3]}).encode())
    report = {"status": {"progress": {"step": 20, "totalSteps": 40, "percent": 50, "loss": 1.25, "evalLoss": 1.5,
                                      "etaSeconds": 60, "trainedTokens": 5000, "updateTime": "2026-11-23T08:05:00Z"},
                         "checkpoints": [{"step": 10, "uri": ckpt_uri.replace("00000020", "00000010")},
                                         {"step": 20, "uri": ckpt_uri}]}}
    assert report_as_trainer(emulator, k8s_job, job.id, report, tmp_path)
    live = client.fine_tuning.jobs.retrieve(job.id)
    assert live.estimated_finish == 1795421160 and live.trained_tokens == 5000  # 08:05:00Z + 60 s
    with pytest.raises(openai.NotFoundError):  # no result file before it succeeded
        client.files.retrieve(f"file-result-{job.id.removeprefix('ftjob-')}")
    assert live.result_files == []

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [20, 10]
    assert ckpts[0].metrics.train_loss == 1.25 and ckpts[0].metrics.valid_loss == 1.5
    assert ckpts[0].metrics.train_mean_token_accuracy == 0.7 and ckpts[0].fine_tuning_job_id == job.id
    assert ckpts[1].metrics.step == 10 and ckpts[1].metrics.train_loss is None  # no trainer_state.json there
    assert ckpts[0].fine_tuned_model_checkpoint == f"ft:tiny-chat:team-a:adder:{job.id}:ckpt-step-20"

    adapter = {"adapter": {"uri": f"s3://adapters/test/team-a/{job.id}", "manifestSha256": "b" * 64, "type": "lora"},
               "evaluation": {"baseline": {"evalLoss": 3.0}, "final": {"evalLoss": 0.5}}}
    cluster.play_pod_status(f"{job.id}-train-abcde", terminated(0, json.dumps(adapter)))
    cluster.play_job_status(f"{job.id}-train", {"active": 0, "succeeded": 1, "completionTime": "2026-11-23T08:10:00Z",
                                                "conditions": [job_condition("SuccessCriteriaMet"), job_condition("Complete")]})
    cluster.wait_condition(job.id, "Succeeded", "True", "Completed")
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model == f"ft:tiny-chat:team-a:adder:{job.id}"
    assert done.finished_at == 1795421400 and done.estimated_finish is None and done.user_provided_suffix == "adder"

    # Its result file: the published metrics.jsonl (the Trainer's log history) as OpenAI's step-metrics CSV.
    stack.storage.open(adapter["adapter"]["uri"]).write_bytes("metrics.jsonl", "".join(json.dumps(e) + "\n" for e in log).encode())
    assert done.result_files == [f"file-result-{job.id.removeprefix('ftjob-')}"]
    result = client.files.retrieve(done.result_files[0])
    assert isinstance(result, FileObject) and result.purpose == "fine-tune-results" and result.created_at == 1795421400
    csv_text = client.files.content(result.id).text
    assert csv_text.splitlines() == ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,learning_rate",
                                     "10,2.5,0.4,,,", "20,1.25,0.7,1.5,,", "30,0.5,,,,"] and result.bytes == len(csv_text)
    assert [f.id for f in client.files.list(purpose="fine-tune-results").data] == [result.id]
    with pytest.raises(openai.BadRequestError):
        client.files.delete(result.id)
    with pytest.raises(openai.NotFoundError):  # another tenant's key: no such file
        stack.tenant("team-b").files.content(result.id)
    with pytest.raises(openai.NotFoundError):  # no such job
        client.files.retrieve(f"file-result-{'x' * 24}")

    events = wait_for(lambda: (evs := client.fine_tuning.jobs.list_events(job.id, limit=100).data)
                      and any(e.message.startswith("Completed:") for e in evs) and evs, what="events")
    messages = [e.message for e in events]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert "Step 20/40: training loss=1.25, validation loss=1.5" in messages
    assert {"Checkpoint saved at step 10", "Checkpoint saved at step 20"} <= set(messages)
    assert "Evaluation: validation loss 3.0 (base model) -> 0.5 (fine-tuned)" in messages
    metrics = next(e for e in events if e.type == "metrics" and e.data.get("step") == 20)
    assert metrics.data["train_loss"] == 1.25
    page1 = client.fine_tuning.jobs.list_events(job.id, limit=2)
    page2 = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page1.data[-1].id)
    assert [e.id for e in page1.data + page2.data] == [e.id for e in events[:4]]
