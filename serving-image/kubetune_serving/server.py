"""The sidecar's HTTP endpoints (aiohttp): /healthz, /readyz, /status."""

from __future__ import annotations

import time

from aiohttp import web
from kubetune.api import constants as c

from .syncer import Syncer


def make_app(syncer: Syncer, *, stall_seconds: float = 60.0) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        # Alive = the reconcile loop still turns (a pass can take a while only when vLLM hangs).
        age = time.monotonic() - syncer.last_pass if syncer.last_pass else 0.0
        if age > max(stall_seconds, 10 * syncer.poll_interval):
            return web.json_response({"ok": False, "message": f"no reconcile pass for {age:.0f}s"}, status=503)
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        ok, message = syncer.ready()
        return web.json_response({"ok": ok, "message": message}, status=200 if ok else 503)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(syncer.status().wire())  # kubetune.api.sidecar.SidecarStatus

    app = web.Application()
    app.router.add_get(c.SYNC_HEALTHZ_PATH, healthz)
    app.router.add_get(c.SYNC_READYZ_PATH, readyz)
    app.router.add_get(c.SYNC_STATUS_PATH, status)
    return app
