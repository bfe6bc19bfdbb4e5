"""What a FineTuneJob's status records of the FineTuneTemplate applied to it (status.template), and the template's
reference to the ModelDeployment that serves its adapters. Apart from api/template.py, which builds on the
FineTuneJob models, so that FineTuneJobStatus can hold it."""

from __future__ import annotations

from pydantic import Field

from .common import DNS_LABEL, DNS_SUBDOMAIN, KubeModel


class ServingRef(KubeModel):
    """The ModelDeployment that serves the adapters trained from a template."""

    name: str = Field(description="Name of the ModelDeployment.", min_length=1, max_length=63, pattern=DNS_LABEL)
    namespace: str | None = Field(
        default=None, max_length=63, pattern=DNS_LABEL,
        description="Its namespace. Empty: the FineTuneJob's own namespace (each team serves its adapters in its "
        "own ModelDeployment of that name); set: one shared ModelDeployment for every namespace.")


class AppliedTemplate(KubeModel):
    """The FineTuneTemplate a job's effective spec was resolved with, as it was then (a later edit of the template
    does not change the job)."""

    name: str = Field(description="Name of the FineTuneTemplate.", max_length=253, pattern=DNS_SUBDOMAIN)
    uid: str | None = Field(default=None, description="Its metadata.uid.", max_length=64)
    resource_version: str | None = Field(default=None, description="Its metadata.resourceVersion when applied.",
                                         max_length=64)
    generation: int | None = Field(default=None, description="Its metadata.generation when applied.", ge=0)
    serving: ServingRef | None = Field(default=None, description="The ModelDeployment that serves the adapter "
                                       "(the template's spec.serving, its namespace filled in).")


# FineTuneJob fields (kept here so that api/finetunejob.py holds one line each).
FIELD = Field(
    default=None, max_length=253, pattern=DNS_SUBDOMAIN,
    description="The FineTuneTemplate (cluster-scoped, `kubectl get ftt`) whose defaults, fixed fields and bounds "
    "apply. Empty: the one template for spec.baseModel.uri if exactly one exists (several: name one), else none. "
    "Applied once, before the first run; status.effectiveSpec shows the result (docs/templates.md).")
EFFECTIVE_SPEC_HELP = (
    "The spec the operator runs: this spec with its FineTuneTemplate's defaults and the platform defaults filled in. "
    "Resolved once, before the first run, and kept: editing the template (or the platform defaults) later does not "
    "change it. A spec change before the training Job exists resolves it again. Its schema is spec's.")
SPEC_HASH_HELP = "Identity of the spec (all but suspend and cancel) that effectiveSpec was resolved from."
