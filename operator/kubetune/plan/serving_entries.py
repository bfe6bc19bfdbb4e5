"""Entries of a ModelDeployment's spec.adapters that someone other than its author adds: the gateway (a job created
through the OpenAI API, kubetune.gateway.models) and the operator (a job trained from a FineTuneTemplate that names
the ModelDeployment serving its adapters, handlers/template_serving.py). Pure.

Both change one entry and nothing else, with a JSON patch that first tests the resourceVersion it was computed from:
a concurrent edit of the ModelDeployment (the platform team's, another writer's) makes the patch fail (409/422)
instead of being overwritten, and the writer reads again.
"""

from __future__ import annotations

from typing import Any

from ..builders.common import short_hash

MAX_ADAPTER_NAME = 63  # a DNS label (api.modeldeployment.AdapterSource.name)


def entry_patch(md: dict[str, Any], name: str, entry: dict[str, Any] | None, *, replace: bool = True) -> list[dict[str, Any]] | None:
    """JSON patch ops that set (entry) or remove (None) the entry `name` of `md`'s spec.adapters, guarded by its
    resourceVersion; None when there is nothing to do. `replace=False`: an existing entry of that name is left as it
    is (whoever owns the ModelDeployment may have edited it, e.g. added a gate)."""
    adapters = (md.get("spec") or {}).get("adapters")
    names = [a.get("name") for a in adapters or []]
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": md["metadata"].get("resourceVersion")}
    if name in names:
        index = names.index(name)
        if entry is None:
            return [guard, {"op": "remove", "path": f"/spec/adapters/{index}"}]
        if not replace or adapters[index] == entry:
            return None
        return [guard, {"op": "replace", "path": f"/spec/adapters/{index}", "value": entry}]
    if entry is None:
        return None
    if adapters is None:
        return [guard, {"op": "add", "path": "/spec/adapters", "value": [entry]}]
    return [guard, {"op": "add", "path": "/spec/adapters/-", "value": entry}]


def template_entry(job_namespace: str, job: str, md_namespace: str, adapter_uri: str) -> dict[str, Any]:
    """The entry that serves a template-trained job's adapter on the template's ModelDeployment: by FineTuneJob in
    the same namespace (its gates read the job's evaluation; it follows the job), by its published URI from another
    namespace (a FineTuneJob reference is same-namespace only). Named after the job (a DNS label; the job's
    namespace first when it is another one)."""
    same = job_namespace == md_namespace
    name = (job if same else f"{job_namespace}-{job}").replace(".", "-")
    if len(name) > MAX_ADAPTER_NAME:
        name = f"{name[:MAX_ADAPTER_NAME - 11].rstrip('-')}-{short_hash(name, 10)}"
    return {"name": name, "fineTuneJobRef": {"name": job}} if same else {"name": name, "uri": adapter_uri}
