"""Property tests over FineTuneJob specs: every input either validates or is rejected with messages
that each name a field; the operator's pure pipeline (resolve -> build -> status) never crashes; and
whatever the CRD schema rejects, the models reject too."""

from __future__ import annotations

import re

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api.crd import all_crds
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.finetunejob import build_children, resolve_spec
from kubetune.config import OperatorSettings
from kubetune.status.finetunejob import Observed, derive_status

SETTINGS = OperatorSettings(default_output_uri="s3://out/adapters")
SCHEMA = all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
PROBLEM = re.compile(r'^spec((\.[A-Za-z][A-Za-z0-9]*)|(\[\d+\])|(\["(?:[^"\\]|\\.)*"?\]))*: \S')
BODY_META = {"name": "fuzz", "namespace": "ns", "uid": "u-1", "generation": 1}

junk = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=False, width=32),
                 st.text(max_size=12), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
uris = st.sampled_from(["hf://Qwen/Qwen2.5-0.5B", "s3://bucket/model", "pvc://claim/m", "file:///tmp/m", "ftp://x/y",
                        "s3://bucket/../up", "hf://", "", "s3://Bad_Bucket/x", "https://example.com/data.jsonl"])
decimals = st.one_of(st.sampled_from(["2e-4", "0.1", "0.05", "1", "0", "1.5", "0.49", "abc", "-1", ".5"]), junk)


def maybe(strategy):
    return st.one_of(st.nothing(), strategy)


def section(**fields):
    """A dict with any subset of `fields`, sometimes an unknown key, sometimes not a dict at all."""
    base = st.fixed_dictionaries({}, optional={k: v for k, v in fields.items()})
    with_extra = st.builds(lambda d, k: {**d, k: 1}, base, st.sampled_from(["unknownField", "epoch", "lr"]))
    return st.one_of(base, base, base, with_extra, junk)


wild_specs = st.fixed_dictionaries(
    {},
    optional={
        "baseModel": section(uri=st.one_of(uris, junk), revision=st.one_of(st.sampled_from(["main", "v1.0", "bad rev"]), junk),
                             trustRemoteCode=st.one_of(st.booleans(), junk)),
        "dataset": section(train=st.one_of(uris, junk), validation=uris, validationSplit=decimals,
                           format=st.one_of(st.sampled_from(["auto", "chatml", "alpaca", "sharegpt", "preference", "text", "xml"]), junk)),
        "method": section(type=st.one_of(st.sampled_from(["sft", "dpo", "cpt", "ppo"]), junk),
                          dpo=section(beta=decimals, lossType=st.sampled_from(["sigmoid", "ipo", "x"]))),
        "adapter": section(type=st.sampled_from(["lora", "qlora", "dora", "full", "prefix"]), rank=st.one_of(st.integers(-1, 600), junk),
                           alpha=st.integers(-1, 2000), dropout=decimals,
                           targetModules=st.one_of(st.lists(st.sampled_from(["q_proj", "all-linear", "bad name!", ""]), max_size=3), junk)),
        "hyperparameters": section(epochs=st.one_of(st.integers(-1, 200), junk), batchSize=st.integers(-1, 2000),
                                   learningRate=decimals, warmupRatio=decimals, maxLength=st.integers(0, 10**7),
                                   packing=st.one_of(st.booleans(), junk), lrScheduler=st.sampled_from(["cosine", "linear", "step"])),
        "checkpointing": section(intervalSteps=st.integers(-1, 10**7), keep=st.integers(-1, 200)),
        "output": section(uri=uris, mergedModel=st.one_of(st.booleans(), junk)),
        "resources": section(gpus=st.integers(-1, 20), nodes=st.integers(0, 70), cpu=st.one_of(st.sampled_from(["8", "500m", "lots", 4]), junk),
                             memory=st.sampled_from(["32Gi", "1e3", "x", 10])),
        "scheduling": section(queueName=st.sampled_from(["team-a", "Team_A"]), nodeSelector=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                              tolerations=st.lists(section(key=st.text(max_size=5), operator=st.sampled_from(["Exists", "Equal", "Maybe"])), max_size=2)),
        "suspend": st.one_of(st.booleans(), junk),
        "backoffLimit": st.one_of(st.integers(-1, 30), junk),
        "activeDeadlineSeconds": st.integers(0, 10**8),
        "hubTokenSecretRef": section(name=st.sampled_from(["hf", "Bad_Name"]), key=st.sampled_from(["token", "bad key"])),
        "unknownTopLevel": junk,
    },
)


good_specs = st.fixed_dictionaries(
    {"baseModel": st.fixed_dictionaries({"uri": st.sampled_from(["hf://Qwen/Qwen2.5-0.5B", "s3://bucket/model", "pvc://claim/m"])},
                                        optional={"revision": st.sampled_from(["main", "v1.0"]), "trustRemoteCode": st.booleans()}),
     "dataset": st.fixed_dictionaries({"train": st.sampled_from(["s3://bucket/d.jsonl", "https://example.com/d.jsonl"])},
                                      optional={"validationSplit": st.sampled_from(["0.1", "0.2"]), "format": st.sampled_from(["auto", "preference"])})},
    optional={
        "method": st.fixed_dictionaries({"type": st.sampled_from(["sft", "dpo"])}),
        "adapter": st.fixed_dictionaries({}, optional={"type": st.sampled_from(["lora", "qlora", "dora", "full"]), "rank": st.integers(1, 256),
                                                       "alpha": st.integers(1, 1024), "dropout": st.sampled_from(["0", "0.05", "0.1"]),
                                                       "targetModules": st.lists(st.sampled_from(["q_proj", "v_proj", "all-linear"]), min_size=1, max_size=3)}),
        "hyperparameters": st.fixed_dictionaries({}, optional={"epochs": st.integers(1, 100), "batchSize": st.integers(1, 64),
                                                               "learningRate": st.sampled_from(["2e-4", "1e-5", "0.001"]), "packing": st.booleans()}),
        "resources": st.fixed_dictionaries({}, optional={"gpus": st.integers(1, 16), "nodes": st.integers(1, 64), "cpu": st.sampled_from([8, "500m"]),
                                                         "memory": st.sampled_from(["32Gi", 1024])}),
        "scheduling": st.fixed_dictionaries({}, optional={"queueName": st.just("team-a"), "priorityClassName": st.just("high"),
                                                          "tolerations": st.just([{"key": "gpu", "operator": "Exists"}])}),
        "suspend": st.booleans(),
        "activeDeadlineSeconds": st.integers(60, 86400),
    },
)


def _mutate(spec, key, value):
    """Put one wild value into an otherwise valid spec."""
    return {**spec, key: value}


specs = st.one_of(
    good_specs,
    wild_specs,
    st.builds(_mutate, good_specs, st.sampled_from(["adapter", "hyperparameters", "resources", "dataset", "method", "bogus"]), junk),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_every_spec_validates_or_names_its_fields(spec):
    try:
        model = parse(FineTuneJobSpec, spec)
    except SpecError as exc:
        assert exc.problems, "a rejection must say why"
        for problem in exc.problems:
            assert PROBLEM.match(problem), f"problem does not name a field: {problem!r}"
        return
    # Valid: the operator's pure pipeline must not crash on it.
    try:
        resolved = resolve_spec(model, SETTINGS)
    except SpecError as exc:  # the operator's own checks (file:// outside `kubetune local`) name their fields too
        assert exc.problems and all(PROBLEM.match(problem) for problem in exc.problems), exc.problems
        return
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": BODY_META, "spec": spec}
    children = build_children(body, resolved, SETTINGS)
    assert children[-1]["kind"] == "Job"
    assert derive_status(Observed(1), None).conditions[0].reason == "Pending"
    # And the CRD schema (what the API server checks) accepts it too.
    jsonschema.validate(model.to_dict(), SCHEMA)


@settings(max_examples=200, deadline=None)
@given(specs)
def test_what_the_crd_schema_rejects_the_models_reject(spec):
    try:
        jsonschema.validate(spec, SCHEMA)
    except jsonschema.ValidationError:
        try:
            parse(FineTuneJobSpec, spec)
        except SpecError:
            return
        raise AssertionError(f"CRD schema rejects but the models accept: {spec!r}")


def _valid(spec) -> bool:
    try:
        parse(FineTuneJobSpec, spec)
        return True
    except SpecError:
        return False


def test_the_strategy_reaches_valid_specs_with_optional_sections():
    """Guard against a fuzzer that only ever produces rejects."""
    from hypothesis import find

    found = find(specs, lambda s: _valid(s) and {"adapter", "hyperparameters", "resources"} <= set(s),
                 settings=settings(max_examples=5000, deadline=None))
    assert _valid(found)
