"""The few vLLM endpoints the sidecar uses (needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in vLLM)."""

from __future__ import annotations

import json
import time

import aiohttp


class VLLMError(Exception):
    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class VLLMClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str | None = None,
                 probe_timeout: float = 3.0, load_timeout: float = 300.0) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._probe = aiohttp.ClientTimeout(total=probe_timeout)
        self._load = aiohttp.ClientTimeout(total=load_timeout)
        self.last_load_seconds: float | None = None
        self.rejected: str | None = None  # why vLLM refused the last listing, when it refused our API key

    async def served_adapters(self) -> dict[str, str | None] | None:
        """``{adapter name: path it was loaded from}`` from ``GET /v1/models``; None if vLLM is not
        up (unreachable or not answering 200), with ``rejected`` set when it answered 401/403."""
        self.rejected = None
        try:
            async with self._session.get(f"{self.base_url}/v1/models", headers=self._headers,
                                         timeout=self._probe) as resp:
                if resp.status in (401, 403):
                    self.rejected = (f"vLLM rejects the sidecar's API key (HTTP {resp.status}): "
                                     + ("$VLLM_API_KEY differs from the key vLLM started with (was the Secret changed "
                                        "since one of the pod's containers started?)" if self._headers
                                        else "vLLM wants a key and the sidecar has no $VLLM_API_KEY"))
                if resp.status != 200:
                    return None
                body = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return {card["id"]: card.get("root") for card in body.get("data", []) if card.get("parent")}

    async def load(self, name: str, path: str) -> None:
        """Load (or replace in place: no 404 window) adapter ``name`` from ``path``."""
        started = time.monotonic()
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": True})
        self.last_load_seconds = time.monotonic() - started

    async def chat(self, model: str, prompt: str, max_tokens: int) -> str:
        """One greedy chat completion's text (a gate's smoke prompt)."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                   "temperature": 0}
        try:
            async with self._session.post(f"{self.base_url}/v1/chat/completions", json=payload, headers=self._headers,
                                          timeout=self._load) as resp:
                if resp.status == 200:
                    body = await resp.json()
                    return str((body.get("choices") or [{}])[0].get("message", {}).get("content") or "")
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise VLLMError(None, f"vLLM not reachable at {self.base_url}: {type(exc).__name__}: {exc}") from exc
        raise VLLMError(resp.status, error_message(text))

    async def unload(self, name: str) -> None:
        """Unload ``name``; one that is not loaded counts as unloaded."""
        try:
            await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        except VLLMError as exc:
            if exc.status != 404:
                raise

    async def _post(self, path: str, payload: dict) -> None:
        try:
            async with self._session.post(f"{self.base_url}{path}", json=payload, headers=self._headers,
                                          timeout=self._load) as resp:
                if resp.status == 200:
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VLLMError(None, f"vLLM not reachable at {self.base_url}: {type(exc).__name__}: {exc}") from exc
        raise VLLMError(resp.status, error_message(text))


def error_message(text: str) -> str:
    """The message of a vLLM/OpenAI error body (``{"error": {"message": ...}}`` or ``{"message": ...}``)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:1000]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:1000]
        if body.get("message"):
            return str(body["message"])[:1000]
    return text.strip()[:1000]
