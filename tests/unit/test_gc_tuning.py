"""The operator's start-up handler tunes CPython's garbage collector (handlers/startup.py tune_gc): what exists at
start-up is frozen, and the young generation's threshold is raised. Run in this process, with the collector's state
restored afterwards."""

from __future__ import annotations

import gc

import kopf

from kubetune.handlers import startup


class Marker:
    """An object made before start-up, as the operator's imports are."""


def test_startup_freezes_the_heap_and_raises_the_young_threshold(monkeypatch):
    monkeypatch.setattr(startup, "reset", lambda: None)  # the operator's runtime (its API client) is not needed here
    before = gc.get_threshold()
    made_before = Marker()
    try:
        startup.configure(kopf.OperatorSettings())
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (startup.GC_YOUNG_THRESHOLD, *before[1:])
        # Frozen: in no generation a collection walks (gc.get_objects(generation) lists generations 0-2 only).
        assert not any(obj is made_before for gen in range(3) for obj in gc.get_objects(gen))
        made_after = Marker()
        assert any(obj is made_after for gen in range(3) for obj in gc.get_objects(gen))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
