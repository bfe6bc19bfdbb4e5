"""Resumable checkpoints in object storage: <prefix>/checkpoints/<step:08d>/..., COMPLETE written last.

A checkpoint exists only once its COMPLETE marker is written; the marker (JSON) lists every file with
its size and the fingerprint of the spec that produced it. On start the trainer resumes from the
newest complete checkpoint with the same fingerprint; checkpoints of another spec are discarded.
Only the newest `keep` complete checkpoints are kept, plus the best one while it is best (the step
transformers records as best_global_step in trainer_state.json: hyperparameters.earlyStopping); a
resume downloads that one too. Deletion removes the marker first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.storage_layout import CHECKPOINT_COMPLETE_MARKER, CHECKPOINTS_DIR
from kubetune_storage import Store

log = logging.getLogger(__name__)

STATE_FILE = "kubetune_state.json"  # our own state inside each checkpoint (baseline eval, fingerprint)
TRAINER_STATE = "trainer_state.json"  # transformers' TrainerState inside each checkpoint
TRAINING_FIELDS = ("baseModel", "dataset", "method", "adapter", "hyperparameters")


def fingerprint(spec: FineTuneJobSpec) -> str:
    """Identity of everything that shapes the training run (not resources, scheduling, retention)."""
    data = spec.to_dict()
    relevant = {k: data.get(k) for k in TRAINING_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:32]


def step_dir(step: int) -> str:
    return f"{step:08d}"


def best_step(local: Path) -> int | None:
    """The best checkpoint's step as the checkpoint folder's trainer_state.json records it (None: not tracked)."""
    try:
        best = json.loads((local / TRAINER_STATE).read_text()).get("best_global_step")
    except (OSError, ValueError):
        return None
    return best if isinstance(best, int) else None


class Checkpoints:
    def __init__(self, prefix: Store, keep: int, spec_fingerprint: str):
        self.store = prefix.child(CHECKPOINTS_DIR)
        self.keep = keep
        self.fingerprint = spec_fingerprint
        self._markers: dict[int, dict[str, Any]] | None = None

    def _scan(self) -> dict[int, dict[str, Any] | None]:
        """step -> marker (None if the folder has no marker = incomplete)."""
        found: dict[int, dict[str, Any] | None] = {}
        for name in self.store.list(""):
            head, _, rest = name.partition("/")
            if not head.isdigit():
                continue
            found.setdefault(int(head), None)
            if rest == CHECKPOINT_COMPLETE_MARKER:
                raw = self.store.read_optional(name)
                try:
                    found[int(head)] = json.loads(raw or b"{}")
                except ValueError:
                    found[int(head)] = {}
        return found

    def complete(self) -> list[int]:
        """Steps of complete checkpoints of this spec, oldest first."""
        found = self._scan()
        return sorted(s for s, m in found.items() if m is not None and m.get("fingerprint") == self.fingerprint)

    def listing(self) -> list[tuple[int, str]]:
        return [(s, self.store.uri_of(step_dir(s))) for s in self.complete()]

    def discard_foreign(self) -> None:
        """Delete checkpoints written for a different spec (the spec changed: training restarts)."""
        found = self._scan()
        foreign = [s for s, m in found.items() if m is not None and m.get("fingerprint") != self.fingerprint]
        if foreign:
            log.warning("checkpoints: discarding %d checkpoint(s) of a previous spec: steps %s", len(foreign), foreign)
            for step in foreign:
                self._delete(step)

    def _delete(self, step: int) -> None:
        names = self.store.list(step_dir(step))
        marker = f"{step_dir(step)}/{CHECKPOINT_COMPLETE_MARKER}"
        if marker in names:
            self.store.delete([marker])  # stops being a checkpoint before any file goes
        self.store.delete([n for n in names if n != marker])

    def save(self, step: int, local: Path, state: dict[str, Any]) -> str:
        """Upload a Trainer checkpoint folder as step `step`; marker last; prune. Returns its URI."""
        self.begin(step, local, state)
        return self.commit(step, [self.upload(step, local)], local)

    # A checkpoint of several pods (each pod's disk holds its own ranks' files: FSDP shards, RNG states):
    # global rank 0 calls `begin`, every pod's first process `upload`s its pod's files once all ranks have
    # written theirs, and rank 0 `commit`s the marker listing every pod's files once all are uploaded.

    def begin(self, step: int, local: Path, state: dict[str, Any]) -> None:
        """Rank 0, before any pod uploads: our state file into the folder; a marker of a re-saved step goes first."""
        (local / STATE_FILE).write_text(json.dumps({**state, "fingerprint": self.fingerprint, "step": step}, indent=2))
        target = step_dir(step)
        if f"{target}/{CHECKPOINT_COMPLETE_MARKER}" in self.store.list(target):  # re-saving the same step (a resume)
            self.store.delete([f"{target}/{CHECKPOINT_COMPLETE_MARKER}"])

    def upload(self, step: int, local: Path) -> dict[str, int]:
        """Upload the files of this pod's checkpoint folder (no marker). -> {relative name: size}."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        for path in files:
            self.store.upload(path, f"{step_dir(step)}/{path.relative_to(local).as_posix()}")
        return {p.relative_to(local).as_posix(): p.stat().st_size for p in files}

    def commit(self, step: int, parts: list[dict[str, int]], local: Path) -> str:
        """Rank 0, after every pod uploaded: the marker listing all their files (the checkpoint exists from now);
        prune. A name two pods uploaded with different sizes is an internal error (one overwrote the other)."""
        files: dict[str, int] = {}
        for part in parts:
            for name, size in part.items():
                if files.setdefault(name, size) != size:
                    raise RuntimeError(f"checkpoint step {step}: two pods wrote {name} with different sizes")
        target = step_dir(step)
        marker = {"step": step, "fingerprint": self.fingerprint, "files": dict(sorted(files.items()))}
        self.store.write_bytes(f"{target}/{CHECKPOINT_COMPLETE_MARKER}", json.dumps(marker).encode())
        self.prune(best=best_step(local))
        return self.store.uri_of(target)

    def prune(self, best: int | None = None) -> None:
        """Keep the newest `keep` complete checkpoints of this spec and the `best` one; delete everything else."""
        found = self._scan()
        ours = sorted(s for s, m in found.items() if m is not None and m.get("fingerprint") == self.fingerprint)
        kept = set(ours[-self.keep:]) | ({best} & set(ours))
        newest = max(kept) if kept else -1
        for step in sorted(found):
            # incomplete folders newer than the newest complete one may be an upload in progress elsewhere
            if step not in kept and (found[step] is not None or step < newest):
                self._delete(step)

    def download(self, step: int, dest: Path) -> dict[str, Any] | None:
        """Fetch checkpoint `step` into dest; returns our state, or None if it is incomplete or corrupt."""
        target = step_dir(step)
        raw = self.store.read_optional(f"{target}/{CHECKPOINT_COMPLETE_MARKER}")
        if raw is None:
            return None
        marker = json.loads(raw)
        self.store.download_tree(target, dest)
        (dest / CHECKPOINT_COMPLETE_MARKER).unlink(missing_ok=True)
        for name, size in marker.get("files", {}).items():
            path = dest / name
            if not path.is_file() or path.stat().st_size != size:
                log.warning("checkpoints: step %d is corrupt (%s missing or wrong size): ignoring it", step, name)
                shutil.rmtree(dest, ignore_errors=True)
                return None
        return json.loads((dest / STATE_FILE).read_text()) if (dest / STATE_FILE).is_file() else {}

    def restore_newest(self, dest_root: Path) -> tuple[int, Path, dict[str, Any]] | None:
        """(step, local folder, state) of the newest usable checkpoint, or None to start fresh. The best
        checkpoint it names is downloaded beside it, and its trainer_state.json pointed at that folder."""
        for step in reversed(self.complete()):
            dest = dest_root / f"checkpoint-{step}"
            state = self.download(step, dest)
            if state is not None:
                self._restore_best(step, dest, dest_root)
                return step, dest, state
        return None

    def _restore_best(self, step: int, dest: Path, dest_root: Path) -> None:
        best = best_step(dest)
        if best is None:
            return
        folder = dest_root / f"checkpoint-{best}"
        if best != step and self.download(best, folder) is None:
            log.warning("checkpoints: the best checkpoint (step %d) is gone: the run cannot publish it", best)
            return
        trainer_state = json.loads((dest / TRAINER_STATE).read_text())
        trainer_state["best_model_checkpoint"] = str(folder)  # where it is on this pod
        (dest / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
