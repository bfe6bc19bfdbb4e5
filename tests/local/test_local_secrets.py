"""`kubetune local run` and Secrets: the Secrets in the given files are the only ones a local run has; a
reference none of them satisfies is refused before anything runs (a cluster would not start that pod:
here it would run without the value, e.g. serve without its API key); the endpoint snippets of a
ModelDeployment with an API key send it from $VLLM_API_KEY and never print it. The whole path with real
vLLM: tests/security/test_no_leaks.py."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.validation import SpecError
from kubetune_local.cli import show_endpoint
from kubetune_local.run import LocalRun

KEY = "s3cr3t-key-value"
MD = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
      "spec": {"baseModel": {"uri": "file:///models/tiny"}, "apiKeySecretRef": {"name": "chat-key", "key": "key"},
               "hubTokenSecretRef": {"name": "hf", "key": "token"}, "storage": {"credentialsSecretRef": {"name": "s3"}}}}
SECRETS = [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat-key"}, "stringData": {"key": KEY}},
           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}, "data": {"token": "aGZfdG9rZW4="}},
           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
            "stringData": {"AWS_ACCESS_KEY_ID": "file:///models/x", "AWS_SECRET_ACCESS_KEY": "b"}}]


def test_secrets_in_the_files_are_kept_as_they_are(tmp_path):
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all([*SECRETS, MD]))
    docs = LocalRun(workdir=tmp_path / "w", uri_map={"file:///models": "file:///elsewhere"}).load([tmp_path / "all.yaml"])
    assert docs[:3] == SECRETS  # values untouched by --map
    assert docs[3]["spec"]["baseModel"]["uri"] == "file:///elsewhere/tiny"


def test_a_reference_no_secret_in_the_files_satisfies_is_refused(tmp_path):
    missing_key = {**SECRETS[1], "data": {"other": "eA=="}}
    (tmp_path / "md.yaml").write_text(yaml.safe_dump_all([SECRETS[0], missing_key, MD]))
    with pytest.raises(SpecError) as err:
        LocalRun(workdir=tmp_path / "w").load([tmp_path / "md.yaml"])
    end = "in the given files (a local run has only the Secrets you give it with -f)"
    assert err.value.problems == [
        f"ModelDeployment/chat: spec.hubTokenSecretRef: no Secret 'hf' with key 'token' {end}",
        f"ModelDeployment/chat: spec.storage.credentialsSecretRef (AWS_ACCESS_KEY_ID): no Secret 's3' with key 'AWS_ACCESS_KEY_ID' {end}",
        f"ModelDeployment/chat: spec.storage.credentialsSecretRef (AWS_SECRET_ACCESS_KEY): no Secret 's3' with key "
        f"'AWS_SECRET_ACCESS_KEY' {end}",
    ]
    (tmp_path / "secrets.yaml").write_text(yaml.safe_dump_all(SECRETS[1:]))
    assert len(LocalRun(workdir=tmp_path / "w").load([tmp_path / "md.yaml", tmp_path / "secrets.yaml"])) == 5
    (tmp_path / "only.yaml").write_text(yaml.safe_dump_all(SECRETS))
    with pytest.raises(SpecError, match="no FineTuneJob or ModelDeployment found"):
        LocalRun(workdir=tmp_path / "w").load([tmp_path / "only.yaml"])


@pytest.mark.parametrize("with_key", [True, False])
def test_endpoint_snippets_send_the_key_from_the_environment_and_never_print_it(with_key, capsys):
    spec = MD["spec"] if with_key else {k: v for k, v in MD["spec"].items() if k != "apiKeySecretRef"}
    show_endpoint(8000, {**MD, "spec": spec, "status": {"adapters": [{"name": "bot"}]}})
    out = capsys.readouterr().out
    assert KEY not in out
    curl = next(line for line in out.splitlines() if "curl " in line)
    python = next(line for line in out.splitlines() if "python -c" in line)
    if with_key:
        assert "  API key: key 'key' of Secret 'chat-key'; set VLLM_API_KEY to it first" in out
        assert ' -H "Authorization: Bearer $VLLM_API_KEY" ' in curl
        assert 'OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["VLLM_API_KEY"])' in python
    else:
        assert "Authorization" not in curl and "API key" not in out
        assert 'api_key="unused"' in python
