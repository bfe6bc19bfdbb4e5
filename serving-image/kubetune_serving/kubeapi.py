"""Just enough Kubernetes API client to list+watch one ConfigMap with aiohttp (no kubernetes package
in the serving image: it would pin a python-dateutil that botocore forbids, for two requests).

Connection: ``$KUBECONFIG`` when set (current context: server, CA, token / client certificate),
else in-cluster (``$KUBERNETES_SERVICE_HOST``/``_PORT`` and the service account's token and CA,
re-read on every connection because bound tokens rotate).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(Exception):
    pass


@dataclass(frozen=True)
class KubeConnection:
    server: str
    namespace: str | None = None
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None

    def headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            token = Path(self.token_file).read_text().strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https://"):
            return False
        if self.insecure:
            return False  # aiohttp: no verification
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert_file:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context


def load_connection(env: Mapping[str, str] | None = None) -> KubeConnection:
    env = os.environ if env is None else env
    if env.get("KUBECONFIG"):
        return from_kubeconfig(Path(env["KUBECONFIG"].split(os.pathsep)[0]))
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no KUBECONFIG set")
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    return KubeConnection(
        server=f"https://{'[' + host + ']' if ':' in host else host}:{port}",
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
        token_file=str(SERVICE_ACCOUNT_DIR / "token"),
        ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
    )


def from_kubeconfig(path: Path) -> KubeConnection:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc

    def named(section: str, name: str | None) -> dict:
        for item in config.get(section) or []:
            if item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise KubeConfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    context = named("contexts", config.get("current-context"))
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user")) if context.get("user") else {}
    if not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {path}: cluster {context.get('cluster')!r} has no server")

    def file_or_data(key: str) -> str | None:
        holder = cluster if key.startswith("certificate-authority") else user
        if holder.get(key):
            return str(Path(path.parent, holder[key]))
        if holder.get(f"{key}-data"):
            handle = tempfile.NamedTemporaryFile(prefix="kube-", delete=False)
            handle.write(base64.b64decode(holder[f"{key}-data"]))
            handle.close()
            return handle.name
        return None

    return KubeConnection(
        server=cluster["server"].rstrip("/"),
        namespace=context.get("namespace"),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        ca_file=file_or_data("certificate-authority"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        client_cert_file=file_or_data("client-certificate"),
        client_key_file=file_or_data("client-key"),
    )
