"""Reads each serving pod's adapter-sync report (`GET /status` on the sidecar's port: kubetune.api.sidecar.SidecarStatus)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from pydantic import ValidationError

from ..api.constants import SYNC_STATUS_PATH
from ..api.sidecar import SidecarStatus

log = logging.getLogger(__name__)
TIMEOUT = aiohttp.ClientTimeout(total=3)


def sync_address(pod: dict[str, Any], container: str, port_name: str) -> str | None:
    """http://<podIP>:<port> of the sidecar, from the pod's own spec and status."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    for ctr in (pod.get("spec") or {}).get("containers") or []:
        if ctr.get("name") == container:
            for port in ctr.get("ports") or []:
                if port.get("name") == port_name:
                    return f"http://{ip}:{port['containerPort']}"
    return None


async def _fetch(session: aiohttp.ClientSession, url: str) -> SidecarStatus | None:
    try:
        async with session.get(f"{url}{SYNC_STATUS_PATH}") as response:
            if response.status != 200:
                return None
            return SidecarStatus.model_validate_json(await response.read())
    except ValidationError as exc:  # another version of the contract: as good as no answer
        log.warning("sidecar %s: its %s is not a kubetune.api.sidecar.SidecarStatus: %s", url, SYNC_STATUS_PATH, exc)
        return None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.debug("sidecar %s unreachable: %s", url, exc)
        return None


async def fetch_reports(pods: list[dict[str, Any]], container: str, port_name: str) -> dict[str, SidecarStatus | None]:
    """pod name -> its sidecar's /status (None when unreachable). All pods are asked concurrently."""
    targets = {p["metadata"]["name"]: sync_address(p, container, port_name) for p in pods}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        names = [name for name, url in targets.items() if url]
        results = await asyncio.gather(*(_fetch(session, targets[name]) for name in names))  # type: ignore[arg-type]
    reports: dict[str, SidecarStatus | None] = {name: None for name in targets}
    reports.update(zip(names, results))
    return reports
