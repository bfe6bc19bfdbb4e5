"""A FineTuneJob trained from a FineTuneTemplate that names the ModelDeployment serving its adapters
(FineTuneTemplate spec.serving, pinned in the job's status.template.serving) is added to that ModelDeployment once
it succeeded: one entry of its spec.adapters (plan.serving_entries.template_entry), by a guarded JSON patch that
changes nothing else. An entry of that name already there is left alone (the platform team may have edited it: a
gate, versions). The ModelDeployment's own reconcile then hot-loads it on every replica; its gates apply.

Nothing is removed when the job is deleted: the published adapter stays in object storage, and what the
ModelDeployment serves is its owner's to change. A ModelDeployment that does not exist, or that the operator may
not patch (a namespace it does not watch), is a Warning event on the job, once.
"""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from ..clients.kube import KubeError
from ..plan.serving_entries import entry_patch, template_entry
from ..status.conditions import find
from .runtime import runtime

ATTEMPTS = 5  # reads and guarded patches while the ModelDeployment keeps changing under us


def _succeeded(status: dict[str, Any]) -> bool:
    cond = find(status.get("conditions"), "Succeeded")
    return bool(cond and cond.get("status") == "True")


async def serve_from_template(parent: Any) -> None:
    """Add the succeeded `parent`'s adapter to its template's ModelDeployment, if it has one and is not there yet."""
    rt = runtime()
    meta = parent["metadata"]
    status = rt.written.get(meta["uid"]) or dict(parent.get("status") or {})
    serving = (status.get("template") or {}).get("serving")
    uri = (status.get("adapter") or {}).get("uri")
    if not serving or not uri or not _succeeded(status) or meta["uid"] in rt.template_served:
        return
    entry = template_entry(meta["namespace"], meta["name"], serving["namespace"], uri)
    path = f"/apis/{c.GROUP}/{c.VERSION}/namespaces/{serving['namespace']}/{c.MODELDEPLOYMENT_PLURAL}/{serving['name']}"
    where = f"ModelDeployment {serving['namespace']}/{serving['name']}"
    for _ in range(ATTEMPTS):
        try:
            md = await rt.kube.request("GET", path)
            ops = entry_patch(md, entry["name"], entry, replace=False)
            if ops is not None:
                await rt.kube.request("PATCH", path, ops, "application/json-patch+json")
                kopf.event(parent, type="Normal", reason="AddedToModelDeployment",
                           message=f"Serving the adapter as {entry['name']!r} on {where} (FineTuneTemplate "
                                   f"{status['template'].get('name')})")
            break
        except KubeError as exc:
            if exc.status in (409, 422):  # it changed since we read it: read again
                continue
            if exc.status not in (403, 404):
                raise
            kopf.event(parent, type="Warning", reason="ServingNotFound",
                       message=f"FineTuneTemplate {status['template'].get('name')} names {where} to serve the adapter, "
                               f"but it {'does not exist' if exc.status == 404 else 'is not in a namespace the operator watches'}")
            break
    else:
        return  # it kept changing: the job's next event tries again
    rt.template_served.add(meta["uid"])
