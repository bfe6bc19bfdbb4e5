"""API keys and tenant isolation: 401 without a (known) key, 403 for a key whose namespace the gateway may not
touch (the API server refuses the gateway's ServiceAccount there), and a second tenant sees nothing of the first."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from kubetune.gateway.tenancy import TenantLimits

from .conftest import OUTSIDER, add_key
from .data import chat_file


def test_401_without_or_with_unknown_key(stack):
    request = urllib.request.Request(stack.url + "/v1/files")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 401
    body = json.loads(err.value.read())["error"]
    assert body["code"] == "invalid_api_key" and "didn't provide an API key" in body["message"]
    for key in ("kt-not-a-key-at-all-0000000000", stack.keys["team-a"] + "x"):
        with pytest.raises(openai.AuthenticationError) as err:
            stack.client(key).files.list()
        assert err.value.body["code"] == "invalid_api_key" and key not in err.value.body["message"]  # never echoed whole


def test_namespace_not_served(stack, emulator):
    outsider = add_key(emulator, OUTSIDER, TenantLimits(allowed_base_models=["*"]))
    with pytest.raises(openai.PermissionDeniedError) as err:  # `default` is no tenant namespace: no RoleBinding there
        stack.client(outsider).fine_tuning.jobs.list()
    assert err.value.body["code"] == "namespace_not_served"
    stack.expected_denials = 1  # that one 403 is the point of this test


def test_second_tenant_sees_nothing_of_the_first(stack, operator):
    a, b = stack.tenant("team-a"), stack.tenant("team-b")
    file_a = a.files.create(file=("train.jsonl", chat_file()), purpose="fine-tune")
    job_a = a.fine_tuning.jobs.create(model="tiny-chat", training_file=file_a.id)
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    for call in (lambda: b.files.retrieve(file_a.id), lambda: b.files.content(file_a.id), lambda: b.files.delete(file_a.id),
                 lambda: b.fine_tuning.jobs.retrieve(job_a.id), lambda: b.fine_tuning.jobs.cancel(job_a.id),
                 lambda: b.fine_tuning.jobs.pause(job_a.id), lambda: b.fine_tuning.jobs.list_events(job_a.id),
                 lambda: b.fine_tuning.jobs.checkpoints.list(job_a.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as err:  # another tenant's file is no file of yours
        b.fine_tuning.jobs.create(model="tiny-chat", training_file=file_a.id)
    assert err.value.body["param"] == "training_file"
    # Untouched: A still has both, and nothing was created in team-b.
    assert a.files.retrieve(file_a.id).id == file_a.id
    assert a.fine_tuning.jobs.retrieve(job_a.id).status != "cancelled"
    assert stack.cluster["team-b"].custom.list_namespaced_custom_object("kubetune.io", "v1alpha1", "team-b",
                                                                         "finetunejobs")["items"] == []
