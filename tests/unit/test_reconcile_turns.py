"""The reconcile skeleton's turns (settings.max_concurrent_reconciles): at most that many reconciles run at once,
and the others start in the order they arrived, like controller-runtime's workers over its FIFO queue."""

from __future__ import annotations

import asyncio

from kubetune.config import OperatorSettings
from kubetune.handlers import runtime as rt_module
from kubetune.handlers.reconcile import Controller, reconcile


async def test_reconciles_take_turns_first_come_first_served(monkeypatch):
    monkeypatch.setattr(rt_module, "_runtime", rt_module.Runtime(
        settings=OperatorSettings(max_concurrent_reconciles=2), kube=None))  # type: ignore[arg-type]
    running, most, started, finished = 0, 0, [], []

    async def observe(body, previous, indexes):
        nonlocal running, most
        running += 1
        most = max(most, running)
        started.append(body["metadata"]["name"])
        await asyncio.sleep(0.01)  # a request to the API server
        running -= 1
        return None

    ctl = Controller("Test", observe, lambda body, settings, seen: "plan", lambda body, plan, settings: [],
                     lambda body, plan, seen, previous, error: {})
    bodies = [{"kind": "Test", "metadata": {"name": f"o{i}", "uid": f"u{i}"}} for i in range(10)]

    async def one(body):
        await reconcile(ctl, body, {})
        finished.append(body["metadata"]["name"])

    await asyncio.gather(*(one(b) for b in bodies))
    names = [b["metadata"]["name"] for b in bodies]
    assert most == 2
    assert started == names and finished == names  # nobody overtakes: the first created is the first done
