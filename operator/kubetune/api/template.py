"""FineTuneTemplate: a platform team's preset for fine-tuning one base model (cluster-scoped, short name `ftt`).

A template names the base model it applies to, the methods and adapter types it allows, defaults for the
FineTuneJob fields a job leaves unset (resources and GPU type, images, Kueue queue, priority class,
hyperparameters), which of those defaults are fixed (a job may not set them to anything else), bounds on
hyperparameters, and the ModelDeployment that serves its adapters. How a job gets one and what it makes of it
(status.effectiveSpec): plan/template.py and docs/templates.md.

The template's own CRD schema carries no defaults (crd.py strips them): the API server must store exactly what
the platform team wrote, so that "the template sets this field" means the field is in the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .common import MODEL_URI, KubeModel, KubeObject, Scheduling, _check_uri_path, decimal
from .finetunejob import Adapter, AdapterType, Checkpointing, Hyperparameters, Method, MethodType, Output, Resources
from .template_ref import ServingRef

FIELD_PATH = r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$"  # a camelCase path under a FineTuneJob's spec


class TemplateBaseModel(KubeModel):
    """The base model a template applies to."""

    uri: str = Field(description="The base model's URI, exactly as FineTuneJobs write spec.baseModel.uri: a job "
                     "that names no template gets this one when it is the only template for its URI.",
                     min_length=6, max_length=1024, pattern=MODEL_URI)
    revision: str | None = Field(
        default=None, max_length=128, pattern=r"^[-._/A-Za-z0-9]+$",
        description="The revision jobs of this template train from: fills an unset spec.baseModel.revision; a job "
        "asking for another revision is refused. Empty: the job's own.")

    @field_validator("uri")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        return _check_uri_path(value)


class TemplateDefaults(KubeModel):
    """Values for the FineTuneJob fields a job leaves unset. Only the fields written here count: a field left out
    keeps the FineTuneJob's built-in default. `fixed` turns any of them into a value the job cannot change."""

    method: Method | None = Field(default=None, description="Training method; options of a method apply only to "  # type: ignore[valid-type]
                                  "jobs of that method.type.")
    adapter: Adapter | None = Field(default=None, description="Adapter type and shape.")
    hyperparameters: Hyperparameters | None = Field(default=None, description="Training settings.")
    checkpointing: Checkpointing | None = Field(default=None, description="Checkpoint cadence and retention.")
    output: Output | None = Field(default=None, description="Where results are published.")
    resources: Resources | None = Field(default=None, description="Compute per node: GPU count and resource name "
                                        "(gpuResourceName), memory, CPU, GPU memory for the pre-flight's fit check.")
    scheduling: Scheduling | None = Field(default=None, description="Kueue LocalQueue (queueName), priorityClassName, "
                                          "and the GPU type as a nodeSelector (e.g. nvidia.com/gpu.product: NVIDIA-L4).")
    image: str | None = Field(default=None, description="Trainer image.", max_length=512, pattern=r"^[^\s]+$")
    active_deadline_seconds: int | None = Field(default=None, description="Longest run, in seconds.",
                                                ge=60, le=30 * 24 * 3600)
    backoff_limit: int | None = Field(default=None, description="Retries after internal errors.", ge=0, le=20)


class TemplateBounds(KubeModel):
    """Limits a job's effective spec must stay within (after the defaults are filled in). Empty: no limit."""

    max_rank: int | None = Field(default=None, description="Largest adapter.rank.", ge=1, le=256)
    max_epochs: int | None = Field(default=None, description="Largest hyperparameters.epochs.", ge=1, le=100)
    max_steps: int | None = Field(default=None, description="Largest hyperparameters.maxSteps.", ge=1, le=10_000_000)
    max_length: int | None = Field(default=None, description="Largest hyperparameters.maxLength (tokens).",
                                   ge=16, le=1_048_576)
    max_batch_size: int | None = Field(default=None, description="Largest hyperparameters.batchSize.", ge=1, le=1024)
    min_learning_rate: str | None = decimal("Smallest hyperparameters.learningRate, e.g. \"1e-5\" (an automatic "
                                            "learning rate is checked too).")
    max_learning_rate: str | None = decimal("Largest hyperparameters.learningRate, e.g. \"3e-4\".")
    max_gpus: int | None = Field(default=None, description="Most resources.gpus per node.", ge=0, le=16)
    max_nodes: int | None = Field(default=None, description="Most resources.nodes.", ge=1, le=64)


@dataclass(frozen=True)
class Bound:
    """One row of BOUNDS: a TemplateBounds field, the spec path it limits, and which way."""

    field: str
    path: str
    kind: Literal["max", "min"]

    def violated(self, value: Any, limit: Any) -> bool:
        if value is None or limit is None:
            return False
        value, limit = (Decimal(str(value)), Decimal(str(limit)))
        return value > limit if self.kind == "max" else value < limit

    def message(self, value: Any, limit: Any, template: str) -> str:
        word = "exceeds the maximum" if self.kind == "max" else "is below the minimum"
        return f"spec.{self.path}: {value} {word} {limit} of FineTuneTemplate {template}"


BOUNDS = (
    Bound("max_rank", "adapter.rank", "max"),
    Bound("max_epochs", "hyperparameters.epochs", "max"),
    Bound("max_steps", "hyperparameters.maxSteps", "max"),
    Bound("max_length", "hyperparameters.maxLength", "max"),
    Bound("max_batch_size", "hyperparameters.batchSize", "max"),
    Bound("min_learning_rate", "hyperparameters.learningRate", "min"),
    Bound("max_learning_rate", "hyperparameters.learningRate", "max"),
    Bound("max_gpus", "resources.gpus", "max"),
    Bound("max_nodes", "resources.nodes", "max"),
)


def set_leaves(model: KubeModel, prefix: str = "", *, skip_defaults: bool = False) -> dict[str, Any]:
    """{camelCase path: wire value} of the fields set in `model` (model_fields_set), recursively; a list or map is
    one leaf. `skip_defaults`: a field whose value equals its built-in default counts as unset (the API server
    fills a CRD's defaults into every object, so an object cannot tell a written default from a filled one)."""
    out: dict[str, Any] = {}
    for name in sorted(model.model_fields_set):
        info, value = type(model).model_fields[name], getattr(model, name)
        path = f"{prefix}{info.alias or name}"
        if isinstance(value, KubeModel):
            out.update(set_leaves(value, path + ".", skip_defaults=skip_defaults))
            continue
        wire = _wire(value)
        if skip_defaults and wire == _wire(info.get_default(call_default_factory=True)):
            continue
        out[path] = wire
    return out


def _wire(value: Any) -> Any:
    if isinstance(value, KubeModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items() if v is not None}
    return value


def builtin_default(path: str) -> Any:
    """The FineTuneJob's built-in default of a spec path (None when it has none)."""
    from .finetunejob import FineTuneJobSpec

    model: Any = FineTuneJobSpec
    value: Any = None
    for part in path.split("."):
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        value = field.get_default(call_default_factory=True)
        model = type(value) if isinstance(value, KubeModel) else None
        if model is None:
            break
    return _wire(value)


class FineTuneTemplateSpec(KubeModel):
    """A preset per base model: what a FineTuneJob of it may ask for, and what it gets when it asks for nothing."""

    description: str | None = Field(default=None, description="What the template is for (shown to users).",
                                    max_length=1024)
    base_model: TemplateBaseModel = Field(description="The base model the template applies to.")
    methods: list[MethodType] | None = Field(  # type: ignore[valid-type]
        default=None, max_length=16, description="The method.type values jobs may use. Empty: every method.")
    adapter_types: list[AdapterType] | None = Field(
        default=None, max_length=8, description="The adapter.type values jobs may use. Empty: every type.")
    defaults: TemplateDefaults = Field(default_factory=TemplateDefaults,
                                       description="Values for the fields a job leaves unset.")
    fixed: list[Annotated[str, Field(max_length=128, pattern=FIELD_PATH)]] | None = Field(
        default=None, max_length=64,
        description="Paths under a FineTuneJob's spec (e.g. scheduling.queueName, resources, image) whose values in "
        "`defaults` a job cannot change: a job that sets one to another value is refused (ValidationFailed). A path "
        "of an object fixes every field `defaults` gives it; each path must name something `defaults` sets.")
    bounds: TemplateBounds = Field(default_factory=TemplateBounds, description="Limits on the effective spec.")
    serving: ServingRef | None = Field(default=None, description="The ModelDeployment that serves the adapters "
                                       "trained from this template (recorded in each job's status.template).")

    @model_validator(mode="after")
    def _consistent(self) -> FineTuneTemplateSpec:
        problems = template_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def template_problems(spec: FineTuneTemplateSpec) -> list[str]:
    """What makes a template unusable: a fixed path with no value, defaults outside the template's own bounds or
    allowed lists (a built-in default counts when `defaults` leaves the field out)."""
    leaves = set_leaves(spec.defaults)
    problems = [f"fixed: {path!r} is not set in defaults" for path in spec.fixed or []
                if not any(leaf == path or leaf.startswith(path + ".") for leaf in leaves)]
    for field, allowed, path in (("methods", spec.methods, "method.type"), ("adapterTypes", spec.adapter_types, "adapter.type")):
        value = leaves.get(path, builtin_default(path))
        if allowed and value not in allowed:
            problems.append(f"{field}: the default {path} {value} is not allowed (set defaults.{path})")
    for bound in BOUNDS:
        limit = getattr(spec.bounds, bound.field)
        value = leaves.get(bound.path, builtin_default(bound.path))
        if bound.violated(value, limit):
            problems.append(f"bounds.{to_camel(bound.field)}: the default {bound.path} {value} is out of bounds "
                            f"({limit}): set defaults.{bound.path}")
    low, high = spec.bounds.min_learning_rate, spec.bounds.max_learning_rate
    if low is not None and high is not None and Decimal(low) > Decimal(high):
        problems.append(f"bounds: minLearningRate {low} is above maxLearningRate {high}")
    return problems


class FineTuneTemplate(KubeObject):
    """A platform team's preset for one base model (cluster-scoped)."""

    kind: Literal["FineTuneTemplate"] = Field(default="FineTuneTemplate", description="Kind.")
    spec: FineTuneTemplateSpec = Field(description="The preset.")

