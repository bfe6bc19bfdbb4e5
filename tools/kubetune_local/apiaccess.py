"""The Kubernetes API a local pod reaches, handed over as kubelet does it: a token of the pod's own
ServiceAccount (TokenRequest) written where the pod's projected ``serviceAccountToken`` volume is
mounted, with the API server's CA and the namespace next to it. Only containers that mount that
volume get API access; the trainer finds the token file (``KUBETUNE_API_TOKEN_FILE``), the adapter-sync
sidecar a kubeconfig that reads it (``tokenFile``), both against the emulator's URL and CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune_emulator import Emulator


def api_access_env(emu: Emulator, ns: str, pod: str, container: dict[str, Any], poddir: Path,
                   volumes: list[dict[str, Any]]) -> dict[str, str]:
    """Write the projected token volume under `poddir`; return the env that points the container at it."""
    projected = {v["name"]: v["projected"] for v in volumes if "projected" in v}
    mount = next((m for m in container.get("volumeMounts", []) if m["name"] in projected), None)
    if mount is None:
        return {}  # no token mounted: this container does not talk to the API
    sources = projected[mount["name"]].get("sources", [])
    token_source = next((s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s), None)
    if token_source is None:
        return {}
    live = emu.get("", "v1", "pods", ns, pod) or {}
    account = (live.get("spec") or {}).get("serviceAccountName") or "default"
    folder = poddir / Path(mount["mountPath"]).name
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / token_source.get("path", "token")
    token.write_text(emu.token(ns, account, token_source.get("expirationSeconds")))
    token.chmod(0o600)
    (folder / "namespace").write_text(ns)
    env = {"KUBETUNE_API_URL": emu.url, "KUBETUNE_API_TOKEN_FILE": str(token)}
    user: dict[str, Any] = {"tokenFile": str(token)}
    if emu.ca_file:
        ca = folder / "ca.crt"
        ca.write_bytes(Path(emu.ca_file).read_bytes())
        env["KUBETUNE_API_CA_FILE"] = str(ca)
    env["KUBECONFIG"] = str(emu.write_kubeconfig(poddir / "kubeconfig", user, ns))
    return env
