"""Every kopf handler of the operator that runs per watch event (indexes, event, change and daemon handlers) is a
coroutine function: kopf runs a plain function in its thread pool, a hop to a thread and back (and a GIL handoff)
for every event of every watched object, which showed in bench/operator_scale.py's profile of a burst of creates."""

from __future__ import annotations

import inspect

import kopf

import kubetune.handlers  # noqa: F401 - registers the handlers


def test_every_resource_handler_is_async():
    registry = kopf.get_default_registry()
    plain = [f"{handler.fn.__module__}.{handler.fn.__qualname__}"
             for kind in (registry._indexing, registry._watching, registry._changing, registry._spawning)
             for handler in kind.get_all_handlers() if not inspect.iscoroutinefunction(handler.fn)]
    assert plain == []
