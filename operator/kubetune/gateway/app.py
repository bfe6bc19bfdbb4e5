"""The gateway application: OpenAI's Files, Fine-tuning, Models and inference APIs over kubetune's CRDs.

Extending it (one router per API area):

    # kubetune/gateway/models.py
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(who: TenantDep, gw: GatewayDep) -> dict:
        items = await gw.kube.request("GET", f"/apis/kubetune.io/v1alpha1/namespaces/{who.namespace}/modeldeployments")
        ...

and its name in ROUTERS below. `who.namespace` is the only namespace a route may touch; `gw.kube` is the
operator's own API client (kubetune.clients.kube.Kube: async, retried, server-side apply as `apply`),
`gw.storage` the shared storage layer (kubetune_storage.Storage), `gw.settings` the parsed settings.
Raise kubetune.gateway.errors.OpenAIError (or its helpers) for any error: the client sees OpenAI's shape.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from kubetune_storage import Storage

from ..clients.kube import Kube
from . import errors
from .settings import GatewaySettings
from .tenancy import KeyStore

# Routers, by module under kubetune.gateway; each module has `router` (a fastapi.APIRouter). A module that is
# not there yet (another area still being built) is skipped, so areas land independently.
ROUTERS = ("files", "jobs", "models", "inference", "usage")


@dataclass
class Gateway:
    """What routes share: settings, the Kubernetes API client (the gateway's ServiceAccount) and storage."""

    settings: GatewaySettings
    kube: Kube
    storage: Storage
    keys: KeyStore


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(gateway)]


def create_app(settings: GatewaySettings, kube: Kube | None = None, storage: Storage | None = None) -> FastAPI:
    kube = kube or Kube()

    @contextlib.asynccontextmanager
    async def close_kube(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await kube.close()  # the API client's connections in the serving loop

    app = FastAPI(title="kubetune gateway", version="v1", docs_url=None, redoc_url=None, lifespan=close_kube,
                  summary="OpenAI-compatible fine-tuning and inference on kubetune.")
    app.state.gateway = Gateway(settings=settings, kube=kube, storage=storage or Storage(),
                                keys=KeyStore(kube, settings.keys_namespace))
    errors.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"ok": True}

    for name in ROUTERS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        app.include_router(module.router)
    return app
