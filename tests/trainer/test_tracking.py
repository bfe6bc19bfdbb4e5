"""spec.tracking on the real path: one real training run (tiny model, 20 steps, in-process trainer) logs to a
real MLflow tracking server started here (sqlite backend, artifacts proxied by the server), writes TensorBoard
event files that are published next to the adapter, and a Weights & Biases run in offline mode (no network).

Each tracker is read back with its own reader: MlflowClient, TensorBoard's EventAccumulator, and the offline
run's .wandb file decoded with wandb's own protobuf schema (wandb 0.31 ships no Python reader of its log
format: the 7-byte W&B header, then LevelDB log records, each a wandb_internal_pb2.Record). The tracker
credentials the pod would get (MLFLOW_TRACKING_USERNAME/PASSWORD, WANDB_API_KEY) are canaries in the env:
the server ignores them (no auth) and offline W&B sends nothing, so the run shows where they end up: nowhere.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import struct
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune_trainer.main import execute
from tests.fixtures.mlflow_server import MlflowServer, mlflow_binary
from tests.fixtures.tiny_data import chat_records, write_jsonl
from tests.trainer.helpers import make_config, manifest_problems, progress_lines

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(mlflow_binary() is None, reason="no .venv-mlflow (make mlflow-venv)")]

JOB = "tracked"
EXPERIMENT = "kubetune-tests"
USER = "canaryuser" + secrets.token_hex(6)  # an identity, not a secret: MLflow records it as the run's mlflow.user
CANARIES = {"MLFLOW_TRACKING_PASSWORD": "canarypass" + secrets.token_hex(6), "WANDB_API_KEY": secrets.token_hex(20)}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    """The MLflow server, then one tracked training run; -> what the tests read back."""
    tmp = tmp_path_factory.mktemp("tracking")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setLevel(logging.DEBUG)
    with MlflowServer(tmp / "mlflow") as server, pytest.MonkeyPatch.context() as mp:
        for name, value in {**CANARIES, "MLFLOW_TRACKING_USERNAME": USER, "KUBETUNE_TERMINATION_LOG": str(tmp / "termination-log"),
                            "KUBETUNE_METRICS_PORT": "0", "HF_HUB_OFFLINE": "1"}.items():
            mp.setenv(name, value)
        for name in ("KUBERNETES_SERVICE_HOST", "KUBETUNE_API_URL", "KUBETUNE_WORK_DIR", "MLFLOW_TRACKING_URI",
                     "WANDB_MODE", "WANDB_DIR"):
            mp.delenv(name, raising=False)
        train = write_jsonl(tmp / "data/train.jsonl", chat_records(64))
        config = make_config(
            tmp / "config.json", job=JOB, model=f"file://{tiny_model_dir}", train=f"file://{train}",
            output=f"file://{tmp}/out", progress_file=tmp / "progress.jsonl", hyperparameters={"maxSteps": 20},
            spec={"tracking": {
                "mlflow": {"trackingUri": server.uri, "experiment": EXPERIMENT,
                           "credentialsSecretRef": {"name": "mlflow", "usernameKey": "user", "passwordKey": "pass"}},
                "tensorboard": {"enabled": True},
                "wandb": {"project": "kubetune-tests", "mode": "offline"}}})
        logging.getLogger().addHandler(handler)
        try:
            code = execute(config, work_dir=tmp / "work")
        finally:
            logging.getLogger().removeHandler(handler)
        termination = (tmp / "termination-log").read_text()
        assert code == exit_codes.SUCCESS, termination
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        yield {"tmp": tmp, "root": tmp / "out/team-a" / JOB, "report": json.loads(termination), "client": client,
               "status": progress_lines(tmp / "progress.jsonl"), "logs": logs.getvalue(), "server": server}


def _mlflow_run(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, runs
    return experiment, runs[0]


def test_mlflow_run_holds_params_step_metrics_evaluation_loss_curve_and_adapter(run, tmp_path):
    client, report = run["client"], run["report"]
    experiment, mlrun = _mlflow_run(client)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == JOB
    params = mlrun.data.params
    # ours: what the job was, with the effective hyperparameters
    assert {k: params.get(k) for k in ("method", "adapter", "learningRate", "batchSize", "maxSteps", "lora.rank")} == {
        "method": "sft", "adapter": "lora", "learningRate": "3e-3", "batchSize": "8", "maxSteps": "20", "lora.rank": "16"}
    assert params["baseModel.uri"].startswith("file://") and params["dataset.train"].endswith("train.jsonl")
    # transformers' MLflowCallback: the TrainingArguments
    assert params["max_steps"] == "20" and params["learning_rate"] == "0.003"
    # per-step metrics, several steps each
    history = {key: [(m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key)]
               for key in ("loss", "learning_rate", "tokens_per_second", "eval_loss")}
    assert len(history["loss"]) >= 5 and len({s for s, _ in history["loss"]}) == len(history["loss"]), history["loss"]
    assert history["loss"][-1][1] < history["loss"][0][1]
    assert len(history["learning_rate"]) == len(history["loss"]) and all(v == pytest.approx(3e-3) for _, v in history["learning_rate"])
    assert len(history["tokens_per_second"]) >= 4 and all(v > 0 for _, v in history["tokens_per_second"])
    # eval_loss: the baseline at step 0, at the checkpoints (10, 20), and the final evaluation
    assert [s for s, _ in history["eval_loss"]][0] == 0 and {10, 20} <= {s for s, _ in history["eval_loss"]}
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    metrics = mlrun.data.metrics
    assert metrics["baseline/evalLoss"] == pytest.approx(baseline["evalLoss"])
    assert metrics["final/evalLoss"] == pytest.approx(final["evalLoss"]) and metrics["final/evalLoss"] < metrics["baseline/evalLoss"]
    assert metrics["final/perplexity"] == pytest.approx(final["perplexity"])
    # the loss curve, as published (same bytes), through the server's artifact proxy
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id)] == ["loss_curve.png"]
    png = Path(client.download_artifacts(mlrun.info.run_id, "loss_curve.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # the published adapter
    tags = mlrun.data.tags
    assert tags["kubetune.adapter.uri"] == report["adapter"]["uri"]
    assert tags["kubetune.adapter.manifestSha256"] == report["adapter"]["manifestSha256"]
    assert tags["kubetune.job.uid"] == "0000-1111"
    # status links the run from the first report on
    links = [s["tracking"]["mlflow"] for s in run["status"] if "tracking" in s]
    assert links[0] == links[-1] == {
        "runId": mlrun.info.run_id,
        "url": f"{run['server'].uri}/#/experiments/{experiment.experiment_id}/runs/{mlrun.info.run_id}"}
    assert run["status"][-1]["progress"]["phase"] == "Done"


def test_tensorboard_event_files_are_published_with_the_adapter_and_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = run["root"]
    manifest = json.loads((root / "manifest.json").read_text())
    listed = [f["path"] for f in manifest["files"] if f["path"].startswith("tensorboard/")]
    assert listed and all("events.out.tfevents" in p for p in listed) and manifest_problems(root) == []
    events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    scalars = events.Tags()["scalars"]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert len(loss) >= 5 and loss[-1][1] < loss[0][1]
    assert len(events.Scalars("train/learning_rate")) == len(loss) and len(events.Scalars("train/tokens_per_second")) >= 4
    assert {0, 10, 20} <= {e.step for e in events.Scalars("eval/loss")}
    report = run["report"]["evaluation"]
    assert events.Scalars("evaluation/baseline/evalLoss")[-1].value == pytest.approx(report["baseline"]["evalLoss"], rel=1e-5)
    assert events.Scalars("evaluation/final/evalLoss")[-1].value == pytest.approx(report["final"]["evalLoss"], rel=1e-5)
    assert "evaluation/final/perplexity" in scalars
    image = events.Images("loss_curve")[-1]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 400
    assert "kubetune/params/text_summary" in events.Tags()["tensors"]
    assert run["status"][-1]["tracking"]["tensorboard"] == {"uri": f"{run['report']['adapter']['uri']}/tensorboard/"}


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file, decoded with wandb's own schema (see the module docstring)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # padding up to the next block
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a record split over blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_is_published_with_its_history(run):
    root = run["root"]
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (runs[0] / "logs").exists()  # W&B's debug logs stay in the pod
    (file,) = runs[0].glob("run-*.wandb")
    records = _wandb_records(file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds and "output_raw" not in kinds  # finished; console capture off: our log is not W&B's
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    steps = [h["train/global_step"] for h in history if "train/loss" in h]
    assert len(steps) >= 5 and steps == sorted(steps)
    assert {0, 10, 20} <= {h["train/global_step"] for h in history if "eval/loss" in h}
    (image,) = [h for h in history if h.get("loss_curve/_type") == "image-file"]  # the loss curve, as a media file
    assert (runs[0] / "files" / image["loss_curve/path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.summary.update})
    assert summary["final/evalLoss"] == pytest.approx(run["report"]["evaluation"]["final"]["evalLoss"])
    config = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = r.run.config.update if kind == "run" else r.config.update
            config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    assert config["method"] == "sft" and config["learningRate"] == "3e-3" and config["max_steps"] == 20
    link = run["status"][-1]["tracking"]["wandb"]
    assert link["runId"] == file.stem.removeprefix("run-") and "url" not in link  # offline: no page


def test_tracker_credentials_appear_nowhere(run):
    """The canaries were in the trainer's env; none is in status, the termination report, the log, any published
    file, the trainer config, or what MLflow stored (params, tags). The user name is MLflow's record of who ran it."""
    _, mlrun = _mlflow_run(run["client"])
    seen = {"status": json.dumps(run["status"]), "termination": json.dumps(run["report"]), "log": run["logs"],
            "config": (run["tmp"] / "config.json").read_text(),
            "mlflow": json.dumps({**mlrun.data.params, **mlrun.data.tags})}
    seen |= {str(p): p.read_bytes().decode("latin-1") for p in run["root"].rglob("*") if p.is_file()}
    assert len(seen) > 10 and "tensorboard/" in " ".join(seen)
    for name, value in CANARIES.items():
        assert [where for where, text in seen.items() if value in text] == [], name
    assert [where for where, text in seen.items() if USER in text] == ["mlflow"] and mlrun.data.tags["mlflow.user"] == USER


def test_a_retried_pod_logs_into_the_same_runs(run):
    """What a second pod of the same FineTuneJob does first (kubetune_trainer.run: Tracking.start before the
    downloads): it finds the MLflow run by the job's UID and resumes the W&B run id; no second run appears."""
    from kubetune.api.trainer_config import ProgressReporting, TrainerConfig
    from kubetune_trainer.reporting import Reporter, Tracker
    from kubetune_trainer.tracking import Tracking

    tmp = run["tmp"]
    _, first = _mlflow_run(run["client"])
    config = TrainerConfig.model_validate(json.loads((tmp / "config.json").read_text()))
    tracker = Tracker()
    reporter = Reporter(ProgressReporting(mode="file", file=str(tmp / "retry.jsonl"), interval_seconds=1), tracker)
    tracking = Tracking(config, tmp / "retry-work", tracker, reporter, active=True)
    tracking.start()
    tracking.close(None)
    links = progress_lines(tmp / "retry.jsonl")[-1]["tracking"]
    assert links["mlflow"]["runId"] == first.info.run_id and "message" not in links["mlflow"]
    assert links["wandb"]["runId"] == run["status"][-1]["tracking"]["wandb"]["runId"]
    _, again = _mlflow_run(run["client"])  # still one run, finished again
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
