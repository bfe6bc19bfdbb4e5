"""The wire contract between the operator and the adapter-sync sidecar (kubetune_serving). Pure: pydantic only.

In:  the desired set, JSON in one ConfigMap key (constants.DESIRED_ADAPTERS_KEY; or a local file),
written by the operator (builders.modeldeployment.desired_set), read by the sidecar:

    {"generation": 7,
     "adapters": [{"name": "support-bot", "uri": "s3://models/team-a/ftj-1",
                   "manifestSha256": "<sha256 of that folder's manifest.json>"},
                  {"name": "by-uri", "uri": "s3://models/team-a/custom", "manifestSha256": null}]}

``manifestSha256`` pins the exact publication (adapters from a FineTuneJob). null or absent: the
adapter is *unpinned* (an adapter given by URI; the operator cannot read object storage). The
sidecar then resolves it itself: it reads ``<uri>/manifest.json``, pins the adapter to that file's
sha256 and proceeds exactly as for a pinned adapter; it re-reads the manifest every
``--resolve-interval`` seconds (and before retrying a failure) and loads a re-published version in
place. No manifest.json at the URI: Failed, retried, never loaded.

Out: ``GET /status`` (constants.SYNC_STATUS_PATH) of every serving pod's sidecar, read by the
operator (clients.sidecar) into the ModelDeployment status:

    {"generation": 7, "vllmReady": true, "message": null,
     "adapters": [{"name": "support-bot", "uri": "...", "manifestSha256": "...", "state": "Ready",
                   "message": null, "loadedAt": "2026-11-23T10:00:00Z"}]}

``generation`` echoes the desired set the sidecar is working on, so the operator can tell a pod that
has not seen the latest set yet from one that has. Each report's ``manifestSha256`` is the sha of
the version the pod serves or is working on: the pinned one, or for an unpinned adapter the one
it resolved (null only until its manifest.json was first read). ``state`` is one of
conditions.SyncState.

Gates (kubetune.api.promotion, docs/promotion.md): an entry with ``trial: {pod, gate}`` is loaded only by the
sidecar of that pod ($KUBETUNE_POD_NAME), under its trial name (never routed); that sidecar checks the gate's
eval part on manifest.json's figures, runs the smoke prompts through vLLM and reports
``trial: {verdict, gateDigest, message, prompts}`` for the entry. Every other sidecar ignores the entry.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .common import ADAPTER_URI, DNS_LABEL, KubeModel
from .conditions import SyncState
from .modeldeployment import check_unique_names
from .promotion import Trial, TrialReport

SHA256 = r"^[a-f0-9]{64}$"


class DesiredAdapter(KubeModel):
    """One adapter the pod must serve."""

    name: str = Field(description="OpenAI model name of the adapter.", min_length=1, max_length=63, pattern=DNS_LABEL)
    uri: str = Field(description="Folder holding manifest.json (s3://, pvc://, hf://org/name@<commit>, file://).",
                     max_length=1024, pattern=ADAPTER_URI)
    manifest_sha256: str | None = Field(
        default=None, pattern=SHA256,
        description="sha256 of that manifest.json; pins the exact adapter. None: unpinned, the sidecar reads "
                    "the manifest itself (and re-reads it to follow re-publications).")

    trial: Trial | None = Field(default=None, description="Run this gate on the one pod named, under this (never "
                                "routed) name; other pods ignore the entry (kubetune.api.promotion). Absent: serve it.")

    @property
    def pinned(self) -> bool:
        return self.manifest_sha256 is not None


class DesiredSet(KubeModel):
    """What every serving pod must have loaded; written by the operator, read by the sidecar."""

    generation: int = Field(description="Increases with every change; echoed in /status.", ge=0)
    adapters: list[DesiredAdapter] = Field(default_factory=list, description="Adapters to serve.", max_length=256)

    @model_validator(mode="after")
    def _unique_names(self) -> DesiredSet:
        check_unique_names(a.name for a in self.adapters)
        return self

    def wire(self) -> dict:
        """The ConfigMap form: every adapter's manifestSha256 present (null when unpinned); `trial` only where set
        (a sidecar of an earlier version reads every other entry)."""
        out = self.model_dump(by_alias=True, mode="json")
        for entry in out["adapters"]:
            if entry.get("trial") is None:
                entry.pop("trial", None)
        return out


class AdapterReport(KubeModel):
    """What one pod's sidecar reports about one desired adapter."""

    name: str
    uri: str
    manifest_sha256: str | None = Field(description="sha256 of the manifest.json served or worked on; None: an "
                                                    "unpinned adapter whose manifest was not read yet.")
    state: SyncState
    message: str | None = None
    loaded_at: str | None = Field(default=None, description="RFC 3339 time vLLM loaded it (state Ready).")
    trial: TrialReport | None = Field(default=None, description="A trial entry's gate verdict (Pending while it runs).")


class SidecarStatus(KubeModel):
    """``GET /status``."""

    generation: int | None = Field(description="Generation of the desired set in force; None before one was read.")
    vllm_ready: bool
    message: str | None = Field(default=None, description="Problem reading the desired set, if any.")
    adapters: list[AdapterReport] = Field(default_factory=list)

    def report(self, name: str) -> AdapterReport | None:
        return next((a for a in self.adapters if a.name == name), None)

    def wire(self) -> dict:
        """The JSON body: every key present (null when unset; `trial` only on trial entries), a stable shape for
        the operator to parse."""
        out = self.model_dump(by_alias=True, mode="json")
        for entry in out["adapters"]:
            if entry.get("trial") is None:
                entry.pop("trial", None)
        return out
