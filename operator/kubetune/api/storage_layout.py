"""Object storage layout shared by the trainer (writer) and operator/serving (readers).

    <output>/<namespace>/<job>/adapter/...         adapter (or full model) files + tokenizer
    <output>/<namespace>/<job>/checkpoints/<step>/ resumable training checkpoints
    <output>/<namespace>/<job>/manifest.json       written LAST; without it the adapter does not exist
"""

MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_COMPLETE_MARKER = "COMPLETE"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
MODEL_CARD = "README.md"
RESOLVED_CONFIG = "training_config.json"


def job_prefix(output_uri: str, namespace: str, job: str) -> str:
    """The folder under which one FineTuneJob publishes everything."""
    return f"{output_uri.rstrip('/')}/{namespace}/{job}"


def manifest_uri(output_uri: str, namespace: str, job: str) -> str:
    return f"{job_prefix(output_uri, namespace, job)}/{MANIFEST}"


def checkpoint_uri(output_uri: str, namespace: str, job: str, step: int) -> str:
    return f"{job_prefix(output_uri, namespace, job)}/{CHECKPOINTS_DIR}/{step:08d}"
