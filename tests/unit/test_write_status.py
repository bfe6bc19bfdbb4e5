"""write_status when the parent is deleted between the event that triggered it and the write: the
API server answers 404 (as the emulator does); nothing is left to describe, and nothing may raise
(a traceback in a child's event handler after its parent's deletion)."""

from __future__ import annotations

import pytest

from kubetune.clients.kube import KubeError
from kubetune.handlers import runtime as rt_module

BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot", "namespace": "default", "uid": "u1"}}
STATUS = {"conditions": [{"type": "Running", "status": "False", "reason": "Pending", "message": ""}]}


class _Kube:
    def __init__(self, error: KubeError):
        self.error = error

    async def merge_patch(self, *args, **kwargs):
        raise self.error


@pytest.fixture
def fake_runtime(monkeypatch):
    def install(error: KubeError) -> rt_module.Runtime:
        runtime = rt_module.Runtime(settings=None, kube=_Kube(error))  # type: ignore[arg-type]
        monkeypatch.setattr(rt_module, "_runtime", runtime)
        return runtime
    return install


async def test_a_deleted_parent_is_not_an_error(fake_runtime):
    runtime = fake_runtime(KubeError(404, "NotFound", 'finetunejobs.kubetune.io "bot" not found'))
    assert await rt_module.write_status(BODY, {}, STATUS) is False
    assert "u1" not in runtime.written


async def test_other_errors_still_raise(fake_runtime):
    fake_runtime(KubeError(403, "Forbidden", "no"))
    with pytest.raises(KubeError):
        await rt_module.write_status(BODY, {}, STATUS)
