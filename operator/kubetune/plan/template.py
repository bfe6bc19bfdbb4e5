"""FineTuneTemplates applied to a FineTuneJob: which template, and the spec it gives. Pure: no I/O.

Which template (choose_template):
- spec.template names one: that one (none of that name: ValidationFailed);
- else the templates whose spec.baseModel.uri equals the job's spec.baseModel.uri: exactly one is chosen; several
  are ambiguous (ValidationFailed naming them: the job must name one); none: the job runs without a template.

What it gives (apply_template), on the job's spec:
- the template's defaults fill every field the job leaves unset. Unset = absent, or equal to the FineTuneJob's
  built-in default: the API server writes a CRD's defaults into every stored object, so a written default and a
  filled one look the same (docs/templates.md says so to users);
- a fixed field the job sets to another value, a method or adapter type the template does not allow, another base
  model (or revision), and a bound the effective spec exceeds are refused, each as one `spec.<field>: ...` problem.

When (pinned_spec / needs_templates): once, when the job is first planned; status.effectiveSpec keeps the result
and status.specHash the spec it came from. Later passes use the kept one, so editing a template never changes a
job that was resolved with it. A different spec before the training Job exists resolves it again (nothing runs
from the old one yet: its pre-flight is replaced); once the training Job exists, or the job has ended, the kept
one stays whatever the spec says (the spec change is ignored, as before).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..api.common import DECIMAL
from ..api.finetunejob import FineTuneJobSpec
from ..api.methods import default_learning_rate
from ..api.template import BOUNDS, FineTuneTemplateSpec, set_leaves
from ..api.template_ref import AppliedTemplate
from ..api.validation import SpecError, parse
from ..builders.common import short_hash
from ..builders.finetunejob import MUTABLE_FIELDS, resolve_spec
from ..config import OperatorSettings


def source_hash(raw_spec: dict[str, Any]) -> str:
    """Identity of a job's spec as stored, all but the fields that act on a running Job (suspend, cancel)."""
    return short_hash({k: v for k, v in raw_spec.items() if k not in MUTABLE_FIELDS}, 16)


def pinned_spec(raw_spec: dict[str, Any], status: dict[str, Any], job_exists: bool, ended: bool) -> dict[str, Any] | None:
    """The effective spec kept in status, if it still stands: resolved from this same spec, or a training Job exists
    (it runs the kept one), or the job has ended."""
    kept = status.get("effectiveSpec")
    if not kept:
        return None
    return kept if job_exists or ended or status.get("specHash") == source_hash(raw_spec) else None


def needs_templates(raw_spec: dict[str, Any], status: dict[str, Any], job_exists: bool, ended: bool) -> bool:
    """Whether this pass resolves the effective spec from the templates: nothing kept that still stands, and nothing
    runs or ran yet (a job that started before templates existed keeps running without one)."""
    return not job_exists and not ended and pinned_spec(raw_spec, status, job_exists, ended) is None


def choose_template(spec: FineTuneJobSpec, templates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The template for `spec` among `templates` (FineTuneTemplate objects; for a named one, what a GET of that name
    found). SpecError if the named one is missing or several apply."""
    if spec.template:
        found = [t for t in templates if t.get("metadata", {}).get("name") == spec.template]
        if not found:
            raise SpecError([f"spec.template: no FineTuneTemplate named {spec.template!r} (kubectl get ftt lists them)"])
        return found[0]
    uri = spec.base_model.uri.rstrip("/")
    matching = sorted((t for t in templates if str((t.get("spec") or {}).get("baseModel", {}).get("uri", "")).rstrip("/") == uri),
                      key=lambda t: t["metadata"]["name"])
    if len(matching) > 1:
        names = ", ".join(t["metadata"]["name"] for t in matching)
        raise SpecError([f"spec.template: required: the FineTuneTemplates {names} all apply to {spec.base_model.uri}; "
                         "name one"])
    return matching[0] if matching else None


def apply_template(spec: FineTuneJobSpec, template: dict[str, Any]) -> FineTuneJobSpec:
    """The job's spec with the template applied (see the module docstring); SpecError naming every violation."""
    name = template["metadata"]["name"]
    rules = parse(FineTuneTemplateSpec, template.get("spec"), f"FineTuneTemplate {name} is invalid: spec")
    problems = _base_model(spec, rules, name)
    given = set_leaves(spec, skip_defaults=True)
    fixed = rules.fixed or []
    merged = spec.model_dump(by_alias=True, exclude_none=True, mode="json", exclude_unset=True)
    method = given.get("method.type") or set_leaves(rules.defaults).get("method.type") or spec.method.type  # type: ignore[attr-defined]
    for path, value in set_leaves(rules.defaults).items():
        head, _, option = path.partition(".")
        if head == "method" and option.split(".")[0] not in ("type", method):
            continue  # options of another method
        if path not in given:
            _put(merged, path, value)
        elif any(path == f or path.startswith(f + ".") for f in fixed) and not _same(given[path], value):
            problems.append(f"spec.{path}: fixed to {_show(value)} by FineTuneTemplate {name}")
    if rules.base_model.revision and not spec.base_model.revision:
        _put(merged, "baseModel.revision", rules.base_model.revision)
    merged["template"] = name
    if problems:
        raise SpecError(problems)
    effective = parse(FineTuneJobSpec, merged)
    problems = _allowed(effective, rules, name) + _bounds(effective, rules, name)
    if problems:
        raise SpecError(problems)
    return effective


def applied(template: dict[str, Any] | None, namespace: str) -> AppliedTemplate | None:
    """What status.template records of the template applied."""
    if template is None:
        return None
    meta, serving = template["metadata"], (template.get("spec") or {}).get("serving")
    return AppliedTemplate(name=meta["name"], uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
                           generation=meta.get("generation"),
                           serving={"name": serving["name"], "namespace": serving.get("namespace") or namespace}
                           if serving else None)


def _base_model(spec: FineTuneJobSpec, rules: FineTuneTemplateSpec, name: str) -> list[str]:
    problems = []
    if spec.base_model.uri.rstrip("/") != rules.base_model.uri.rstrip("/"):
        problems.append(f"spec.baseModel.uri: FineTuneTemplate {name} is for {rules.base_model.uri}, not {spec.base_model.uri}")
    if rules.base_model.revision and spec.base_model.revision not in (None, rules.base_model.revision):
        problems.append(f"spec.baseModel.revision: fixed to {rules.base_model.revision} by FineTuneTemplate {name}")
    return problems


def _allowed(spec: FineTuneJobSpec, rules: FineTuneTemplateSpec, name: str) -> list[str]:
    problems = []
    for path, value, allowed in (("method.type", spec.method.type, rules.methods),  # type: ignore[attr-defined]
                                 ("adapter.type", spec.adapter.type, rules.adapter_types)):
        if allowed and value not in allowed:
            problems.append(f"spec.{path}: {value} is not allowed by FineTuneTemplate {name} (allowed: {', '.join(allowed)})")
    return problems


def _bounds(spec: FineTuneJobSpec, rules: FineTuneTemplateSpec, name: str) -> list[str]:
    wire = spec.model_dump(by_alias=True, mode="json")
    problems = []
    for bound in BOUNDS:
        limit = getattr(rules.bounds, bound.field)
        value = _get(wire, bound.path)
        if value is None and bound.path == "hyperparameters.learningRate" and limit is not None:
            auto = default_learning_rate(spec.method.type, spec.adapter.type)  # type: ignore[attr-defined]
            if bound.violated(auto, limit):
                problems.append(bound.message(f"{auto} (the automatic rate of {spec.method.type} with "  # type: ignore[attr-defined]
                                              f"{spec.adapter.type}; set it)", limit, name))
            continue
        if bound.violated(value, limit):
            problems.append(bound.message(value, limit, name))
    return problems


def _get(node: Any, path: str) -> Any:
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _put(node: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _same(a: Any, b: Any) -> bool:
    """Equal values; decimal strings by value ("2e-4" is "0.0002")."""
    if isinstance(a, str) and isinstance(b, str) and re.match(DECIMAL, a) and re.match(DECIMAL, b):
        return Decimal(a) == Decimal(b)
    return a == b


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Effective:
    """A job's effective spec for this pass, and where it came from."""

    spec: FineTuneJobSpec  # template and platform defaults filled in; suspend and cancel always the job's own
    source_hash: str  # status.specHash: the spec it was resolved from
    template: AppliedTemplate | None  # status.template
    stale: bool = False  # kept although the job's spec changed since (a training Job runs the kept one)


def effective(body: dict[str, Any], settings: OperatorSettings, status: dict[str, Any], job_exists: bool, ended: bool,
              templates: list[dict[str, Any]] | None) -> Effective:
    """The kept effective spec if it stands (pinned_spec), else one resolved now: the template chosen among
    `templates` (None: not consulted) applied, then the platform defaults. SpecError for an invalid spec."""
    raw = dict(body["spec"])
    spec, current = parse(FineTuneJobSpec, raw), source_hash(raw)
    kept = pinned_spec(raw, status, job_exists, ended)
    if kept is not None:
        pinned = parse(FineTuneJobSpec, kept, "status.effectiveSpec")
        pinned = pinned.model_copy(update={field: getattr(spec, field) for field in MUTABLE_FIELDS})
        template = AppliedTemplate.model_validate(status["template"]) if status.get("template") else None
        return Effective(pinned, status.get("specHash") or current, template, stale=status.get("specHash") != current)
    chosen = choose_template(spec, templates) if templates is not None else None
    resolved = resolve_spec(apply_template(spec, chosen) if chosen else spec, settings)
    return Effective(resolved, current, applied(chosen, body["metadata"]["namespace"]))


def spec_that_ran(ftj: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob's effective spec (status.effectiveSpec: what the trainer ran, a template and the platform
    defaults filled in), or its spec where none was written yet. What readers of another object's job (a
    ModelDeployment admitting its adapter) must look at: the spec alone lacks what the template gave it."""
    return dict((ftj.get("status") or {}).get("effectiveSpec") or ftj.get("spec") or {})
