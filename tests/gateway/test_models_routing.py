"""Pure parts of models/inference/usage: names, routes from a ModelDeployment's status (as the operator writes
it), the stream rewriting, `kubetune usage`'s table. No I/O."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kubetune.gateway import inference, jobview
from kubetune.gateway.routing import Miss, Route, Unroutable, adapter_name, job_model, parse_fine_tuned, route_adapter, route_base
from kubetune.gateway.usage import format_table, parse_since, prometheus_query, tokens_from_exposition, usage_rows

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def md(adapters=(), ready=1, endpoint="http://shared.ml-serving.svc:8000/v1"):
    return {"metadata": {"name": "shared", "namespace": "ml-serving"},
            "status": {"endpoint": endpoint, "readyReplicas": ready,
                       "adapters": [{"name": n, "state": s, "message": m} for n, s, m in adapters]}}


def ftj(ns, name, model="tiny", suffix="bot", gpu=None, tokens=None, done=None, api=True):
    status = {**({"gpuSeconds": gpu} if gpu is not None else {}), **({"progress": {"trainedTokens": tokens}} if tokens else {}),
              **({"completionTime": done} if done else {})}
    meta = {"name": name, "namespace": ns}
    if api:
        meta |= {"labels": {jobview.LABEL_API: "openai"},
                 "annotations": {jobview.ANNOTATION: json.dumps({"model": model, "suffix": suffix})}}
    return {"metadata": meta, "status": status}


def test_fine_tuned_names_round_trip_and_adapter_names_are_dns_labels():
    job = "ftjob-" + "a" * 24
    name = job_model(ftj("team-a", job))
    assert str(name) == f"ft:tiny:team-a:bot:{job}" and parse_fine_tuned(str(name)) == name
    assert parse_fine_tuned("gpt-4o") is None and parse_fine_tuned("ft:tiny:team-a") is None
    assert job_model(ftj("team-a", job, api=False)) is None  # made with kubectl: no public model
    long = adapter_name("a-very-long-team-namespace-name-x" * 2, job)
    assert len(long) <= 63 and long[-1] != "-" and long.startswith("ft-")
    # a '-' join alone would collide: ("a-b", "c") vs ("a", "b-c")
    assert adapter_name("a-b", "c") != adapter_name("a", "b-c")


def test_routes_from_the_deployments_status():
    assert route_base(md()) == Route("http://shared.ml-serving.svc:8000/v1", "shared", "ml-serving", "shared")
    assert route_adapter(md([("ft-x", "Ready", None)]), "ft-x").served == "ft-x"
    for status, miss in ((md([("ft-x", "Loading", "loaded on 1/2 replicas")]), Miss.LOADING), (md(), Miss.LOADING),
                         (md([("ft-x", "Rejected", "rank 64 > maxLoraRank 16")]), Miss.FAILED),
                         (md([("ft-x", "Ready", None)], ready=0), Miss.NOT_READY), (None, Miss.NO_DEPLOYMENT)):
        found = route_adapter(status, "ft-x")
        assert isinstance(found, Unroutable) and found.miss == miss, (status, found)
    assert "rank 64 > maxLoraRank 16" in route_adapter(md([("ft-x", "Rejected", "rank 64 > maxLoraRank 16")]), "ft-x").message


def test_stream_usage_is_requested_counted_and_hidden_unless_asked():
    body, wants = inference.rewrite_upstream_request({"model": "ft:x", "stream": True, "messages": []}, "ft-1")
    assert body["model"] == "ft-1" and body["stream_options"] == {"include_usage": True} and not wants
    body, wants = inference.rewrite_upstream_request({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, "s")
    assert wants and body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in inference.rewrite_upstream_request({"model": "m"}, "s")[0]
    chunk = b'data: {"id":"1","model":"ft-1","choices":[{"delta":{"content":"Hi"}}],"usage":null}'
    assert json.loads(inference._event(chunk, "ft:x", "team-a", False)[6:])["model"] == "ft:x"
    usage = b'data: {"id":"1","model":"ft-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
    assert inference._event(usage, "ft:x", "team-a", False) is None  # counted, not shown
    assert json.loads(inference._event(usage, "ft:x", "team-a", True)[6:])["usage"]["completion_tokens"] == 2
    assert inference._event(b"data: [DONE]", "ft:x", "team-a", False) == b"data: [DONE]\n\n"


def test_usage_table_per_tenant_and_model():
    jobs = [ftj("team-a", "ftjob-1", gpu=3600, tokens=1000, done="2026-11-30T10:00:00Z"),
            ftj("team-a", "ftjob-2", gpu=7200, tokens=500),  # still running: always in the window
            ftj("team-a", "ftjob-old", gpu=99, done="2026-10-01T00:00:00Z"),
            ftj("team-b", "manual", gpu=1800, api=False, done="2026-12-01T11:00:00Z")]
    tokens = {("team-a", "tiny", "prompt"): 12.0, ("team-a", "tiny", "completion"): 5.0}
    rows = usage_rows(jobs, tokens, parse_since("7d", NOW))
    by = {(r.namespace, r.model): r for r in rows}
    assert (by[("team-a", "ft:tiny:team-a:bot:ftjob-1")].gpu_seconds, by[("team-a", "ft:tiny:team-a:bot:ftjob-2")].jobs) == (3600, 1)
    assert ("team-a", "ft:tiny:team-a:bot:ftjob-old") not in by and by[("team-b", "finetunejob/manual")].gpu_seconds == 1800
    assert by[("team-a", "tiny")].tokens == {"prompt": 12.0, "completion": 5.0}
    table = format_table(rows).splitlines()
    assert table[0].split() == ["NAMESPACE", "MODEL", "JOBS", "GPU-HOURS", "TRAINED", "TOKENS", "PROMPT", "TOKENS", "COMPLETION", "TOKENS"]
    assert table[1].split() == ["team-a", "ft:tiny:team-a:bot:ftjob-1", "1", "1.00", "1000", "0", "0"]


def test_token_sources():
    text = ('# TYPE kubetune_gateway_tokens_total counter\n'
            'kubetune_gateway_tokens_total{model="tiny",namespace="team-a",type="prompt"} 12.0\n'
            'kubetune_gateway_tokens_total{model="tiny",namespace="team-b",type="prompt"} 3.0\n')
    assert tokens_from_exposition(text, "team-a") == {("team-a", "tiny", "prompt"): 12.0}
    assert prometheus_query("team-a", parse_since("24h", NOW), NOW) == (
        'sum by (namespace, model, type) (increase(kubetune_gateway_tokens_total{namespace="team-a"}[86400s]))')
    assert parse_since("2026-11-30T00:00:00Z", NOW) == datetime(2026, 11, 30, tzinfo=timezone.utc)
