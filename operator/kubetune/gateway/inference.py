"""POST /v1/chat/completions and /v1/completions: proxied to the vLLM of the ModelDeployment serving `model`.

- Routing: kubetune.gateway.models.resolve (tenancy, the shared ModelDeployment, its status).
- The model name is rewritten both ways: the public name (a base model's, or `ft:...`) becomes the name vLLM
  serves (the ModelDeployment's, or the adapter's) in the request, and back in the response, its stream chunks
  and error messages.
- Streams pass through as they come (server-sent events, forwarded event by event, never the whole response):
  the gateway asks vLLM for the final usage chunk (`stream_options.include_usage`, which vLLM's OpenAI server
  supports) to count tokens, and drops that chunk when the client did not ask for it itself.
- Tokens are counted from `usage` into kubetune_gateway_tokens_total (kubetune.gateway.metrics).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .app import GatewayDep
from .errors import OpenAIError, bad_request
from .metrics import REQUESTS, UPSTREAM, count_usage
from .models import resolve
from .routing import Route
from .tenancy import Tenant, TenantDep

# Upstream: no total limit (a long generation streams for minutes), bounded connect and per-read waits.
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)


def upstream(app: FastAPI) -> aiohttp.ClientSession:
    """The app's pooled upstream client (keep-alive connections to the vLLM Services), made on first use in the
    serving loop (so an app run without its lifespan works too) and closed by the lifespan."""
    session = getattr(app.state, "upstream", None)
    if session is None or session.closed:
        session = app.state.upstream = aiohttp.ClientSession(
            timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30))
    return session


@contextlib.asynccontextmanager
async def _session(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if getattr(app.state, "upstream", None) is not None:
            await app.state.upstream.close()


router = APIRouter(lifespan=_session)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, who: TenantDep, gw: GatewayDep) -> Response:
    return await proxy(request, who, gw, "chat/completions")


@router.post("/v1/completions")
async def completions(request: Request, who: TenantDep, gw: GatewayDep) -> Response:
    return await proxy(request, who, gw, "completions")


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("you must provide a model parameter", param="model")
    return body


def rewrite_upstream_request(body: dict[str, Any], served: str) -> tuple[dict[str, Any], bool]:
    """(the body to send vLLM, whether the client asked for the usage chunk itself)."""
    out = {**body, "model": served}
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    if body.get("stream") is True and not wants_usage:
        out["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return out, wants_usage


async def proxy(request: Request, who: Tenant, gw: Any, endpoint: str) -> Response:
    started = time.perf_counter()
    body = await _body(request)
    model = body["model"]
    route = await resolve(gw, who, model)
    upstream_body, wants_usage = rewrite_upstream_request(body, route.served)
    session = upstream(request.app)
    try:
        response = await session.post(f"{route.url}/{endpoint}", json=upstream_body,
                                      headers={"Accept": request.headers.get("accept", "application/json")})
    except (aiohttp.ClientError, TimeoutError) as exc:
        REQUESTS.labels(who.namespace, model, endpoint, "502").inc()
        raise OpenAIError(502, f"The model `{model}` could not be reached ({type(exc).__name__}); retry shortly.",
                          code="upstream_unreachable") from None
    UPSTREAM.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    REQUESTS.labels(who.namespace, model, endpoint, str(response.status)).inc()
    if response.status != 200:
        raw = await response.read()
        response.release()
        return Response(_rename(raw, route, model), status_code=response.status,
                        media_type=response.headers.get("Content-Type", "application/json"))
    if "text/event-stream" in response.headers.get("Content-Type", ""):
        return StreamingResponse(_stream(response, route, model, who.namespace, wants_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache", **_version(route)})
    try:
        data = await response.json(content_type=None)
    finally:
        response.release()
    if isinstance(data, dict):
        data["model"] = model
        count_usage(who.namespace, model, data.get("usage"))
    return JSONResponse(data, headers=_version(route))


VERSION_HEADER = "x-kubetune-adapter-version"


def _version(route: Route) -> dict[str, str]:
    """Which version of a versioned adapter answered (its canary or the stable one: docs/promotion.md)."""
    return {VERSION_HEADER: route.version} if route.version else {}


def _rename(raw: bytes, route: Route, model: str) -> bytes:
    """An upstream error body with the served name replaced by the public one."""
    return raw.replace(route.served.encode(), model.encode()) if route.served != model else raw


async def _stream(response: aiohttp.ClientResponse, route: Route, model: str, namespace: str,
                  wants_usage: bool) -> AsyncIterator[bytes]:
    """Forward server-sent events as they arrive: each `data:` event with the model renamed, the usage chunk
    counted (and dropped unless the client asked for it)."""
    buffer = b""
    try:
        async for piece in response.content.iter_any():
            buffer += piece
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2:]
                out = _event(event, model, namespace, wants_usage)
                if out is not None:
                    yield out
        if buffer.strip():
            out = _event(buffer, model, namespace, wants_usage)
            if out is not None:
                yield out
    finally:
        response.release()


def _event(event: bytes, model: str, namespace: str, wants_usage: bool) -> bytes | None:
    if not event.startswith(b"data: ") or event == b"data: [DONE]":
        return event + b"\n\n"
    try:
        chunk = json.loads(event[6:])
    except ValueError:
        return event + b"\n\n"
    if not isinstance(chunk, dict):
        return event + b"\n\n"
    usage = chunk.get("usage")
    if usage and not chunk.get("choices"):  # the final usage chunk (include_usage)
        count_usage(namespace, model, usage)
        if not wants_usage:
            return None
    if "model" in chunk:
        chunk["model"] = model
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
