"""
Watch streams with the semantics of the real API server.

* ``resourceVersion`` unset or ``"0"``: synthetic ADDED events for the current objects, then live events.
* ``resourceVersion=N``: only events newer than N, replayed from the per-resource event log, then live;
  an N older than the retained log gets an ERROR event with a ``410 Expired`` Status.
* ``sendInitialEvents=true``: the initial ADDED events end with a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"``.
* The subscription is made before the snapshot, synchronously, so no event is lost or duplicated.
* Label/field selectors filter events; an object that stops (starts) matching arrives as DELETED (ADDED).
* ``timeoutSeconds`` ends the stream; client disconnects cancel it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web

from kubetune_emulator.errors import ApiError, bad_request
from kubetune_emulator.registry import ResourceType
from kubetune_emulator.store import Event, Store

Presenter = Callable[[Mapping[str, Any]], Any]
_CLOSE = object()


class WatchHub:
    """Tracks open watch streams so that shutdown can end them promptly."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Any]] = set()

    def close_all(self) -> None:
        for queue in list(self.queues):
            queue.put_nowait(_CLOSE)


def _translate(event: Event, visible: Callable[[Mapping[str, Any]], bool]) -> str | None:
    """The event type that this watcher sees (or None), given its filters."""
    now_visible = visible(event.obj)
    if event.type != "MODIFIED":
        return event.type if now_visible else None
    was_visible = event.prev is not None and visible(event.prev)
    if now_visible and was_visible:
        return "MODIFIED"
    if now_visible:
        return "ADDED"
    if was_visible:
        return "DELETED"
    return None


async def serve_watch(
        raw_request: aiohttp.web.BaseRequest,
        store: Store,
        hub: WatchHub,
        rtype: ResourceType,
        params: Mapping[str, str],
        visible: Callable[[Mapping[str, Any]], bool],
        present: Presenter,
) -> aiohttp.web.StreamResponse:
    timeout = params.get("timeoutSeconds")
    try:
        deadline = asyncio.get_running_loop().time() + float(timeout) if timeout else None
    except ValueError:
        raise bad_request(f"invalid timeoutSeconds: {timeout!r}") from None
    rv_param = params.get("resourceVersion") or ""
    send_initial = params.get("sendInitialEvents") in ("true", "True", "1")

    queue: asyncio.Queue[Any] = asyncio.Queue()
    gr = rtype.group_resource
    subscriber = queue.put_nowait
    store.watchers[gr].add(subscriber)  # subscribe first, then snapshot: nothing is lost in between
    hub.queues.add(queue)
    response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        initial: list[tuple[str, Mapping[str, Any]]] = []
        error: ApiError | None = None
        if send_initial or rv_param in ("", "0"):
            initial = [("ADDED", obj) for obj in store.list(rtype, None) if visible(obj)]
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise bad_request(f"invalid resourceVersion: {rv_param!r}") from None
            try:
                initial = [(etype, event.obj) for event in store.events_since(rtype, since)
                           if (etype := _translate(event, visible)) is not None]
            except ApiError as exc:
                error = exc
        last_rv = store.rv

        response.enable_chunked_encoding()
        await response.prepare(raw_request)

        async def send(etype: str, obj: Any) -> None:
            await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        if error is not None:
            await send("ERROR", error.status())
            await response.write_eof()
            return response
        for etype, obj in initial:
            await send(etype, present(obj))
        if send_initial:
            await send("BOOKMARK", {
                "kind": rtype.kind, "apiVersion": rtype.group_version,
                "metadata": {"resourceVersion": str(last_rv),
                             "annotations": {"k8s.io/initial-events-end": "true"}},
            })
        while True:
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                break
            try:  # not asyncio.wait_for: on Python 3.11 it can swallow a cancel that races the event
                async with asyncio.timeout(remaining):
                    event = await queue.get()
            except TimeoutError:
                break
            if event is _CLOSE:
                break
            if event.rv <= last_rv:
                continue
            last_rv = event.rv
            etype = _translate(event, visible)
            if etype is not None:
                await send(etype, present(event.obj))
        await response.write_eof()
        return response
    except ConnectionError:  # the client went away mid-write
        return response
    finally:
        store.watchers[gr].discard(subscriber)
        hub.queues.discard(queue)
