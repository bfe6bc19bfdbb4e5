"""`kubetune local run`: a FineTuneJob (and ModelDeployment) manifest executed on this machine.

The pieces are the real ones: the API emulator stands in for the API server, the real operator
(`kubetune operator`, a subprocess) reconciles the manifests into Jobs and Deployments, and the local
kubelet runs their containers as processes: the trainer (`python -m kubetune_trainer`), vLLM and the
adapter-sync sidecar. Object storage is a local folder (file://).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.template import FineTuneTemplateSpec
from kubetune.api.validation import SpecError, parse
from kubetune_emulator import Emulator
from .containerpod import ContainerPods
from .kubelet import LocalKubelet
from .podman import ContainerProcess, Podman

REPO_ROOT = Path(__file__).resolve().parents[2]
# The chart's RBAC for the operator, rendered with these values (tests/chart/test_rbac.py keeps it in step).
OPERATOR_RBAC = Path(__file__).with_name("operator-rbac.yaml")
OPERATOR_RBAC_VALUES = {"watch": {"namespaces": ["default"]}}
# The chart's operator Deployment, rendered with the same values (tests/local/test_containers.py keeps it in
# step): what the container mode runs the operator from.
OPERATOR_DEPLOYMENT = Path(__file__).with_name("operator-deployment.yaml")
RUNTIMES = ("process", "podman")
MODELS = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec}
TEMPLATE = c.FINETUNETEMPLATE_KIND  # cluster-scoped presets, applied before the jobs that use them


@dataclass
class LocalRun:
    workdir: Path
    uri_map: dict[str, str] = field(default_factory=dict)
    serving_python: str | None = None
    pvc_map: dict[str, Path] = field(default_factory=dict)  # claim -> host folder; default <workdir>/pvcs/<claim>
    namespace: str = "default"
    runtime: str = "process"  # "podman": every pod, and the operator itself, as containers of the built images
    emu: Emulator | None = None
    operator: subprocess.Popen | ContainerProcess | None = None
    kubelet: LocalKubelet | None = None

    def __post_init__(self) -> None:
        # Relative to the user's current directory, once: the operator, the trainer and vLLM run elsewhere.
        self.workdir = Path(self.workdir).resolve()

    # --- manifests ----------------------------------------------------------------------------
    def load(self, files: list[Path]) -> list[dict[str, Any]]:
        """Read, map URIs, and validate every kubetune object before anything runs or downloads. Secrets
        in the files are kept as they are (applied first): the only Secrets a local run has."""
        docs, problems = [], []
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
                    docs.append(doc)
                    continue
                if not isinstance(doc, dict) or doc.get("kind") not in (*MODELS, TEMPLATE):
                    continue
                doc = self._map(doc)
                try:
                    parse({**MODELS, TEMPLATE: FineTuneTemplateSpec}[doc["kind"]], doc.get("spec"))
                except SpecError as exc:
                    name = (doc.get("metadata") or {}).get("name", "?")
                    problems += [f"{file}: {doc['kind']}/{name}: {p}" for p in exc.problems]
                docs.append(doc)
        problems += _missing_secrets(docs, self.namespace) + _template_problems(docs)
        if problems:
            raise SpecError(problems)
        if not any(doc["kind"] in MODELS for doc in docs):
            raise SpecError([f"{', '.join(map(str, files))}: no FineTuneJob or ModelDeployment found"])
        return docs

    def _map(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self._map(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._map(v) for v in node]
        if isinstance(node, str):
            for prefix, target in self.uri_map.items():
                if node == prefix or node.startswith(prefix.rstrip("/") + "/"):
                    return target.rstrip("/") + node[len(prefix.rstrip("/")):]
        return node

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        self.emu = Emulator(rbac=True).start()
        for crd in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            self.emu.apply_file(crd)
        operator_kubeconfig = install_operator_rbac(self.emu, self.workdir / "operator.kubeconfig", self.namespace)
        if self.runtime == "podman":
            self._start_containers()
            return
        env = {**os.environ, "KUBECONFIG": operator_kubeconfig, "KUBETUNE_DEFAULT_OUTPUT_URI": f"file://{storage.resolve()}",
               # file:// URIs name folders on this machine: fine here, refused by an operator on a cluster
               "KUBETUNE_ALLOW_FILE_URIS": "true",
               "KUBETUNE_TRAINER_IMAGE": "local/kubetune-trainer", "KUBETUNE_SERVING_IMAGE": "local/kubetune-serving"}
        log = open(self.workdir / "operator.log", "ab")
        self.operator = subprocess.Popen([sys.executable, "-m", "kubetune", "operator", "-n", self.namespace], env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.kubelet = LocalKubelet(self.emu, self.workdir / "pods", serving_python=self.serving_python,
                                    pvc_dir=self.workdir / "pvcs", pvc_map=self.pvc_map).start()

    def _start_containers(self) -> None:
        """The container mode: the operator from its image as the chart's Deployment runs it (its command, args, env,
        security context and the chart ServiceAccount's token), and a kubelet that runs pods as containers."""
        assert self.emu is not None
        run_id = hashlib.sha256(str(self.workdir.resolve()).encode()).hexdigest()[:8]  # one workdir, one set of names
        containers = ContainerPods(self.emu, Podman(self.workdir / "podman"), lambda claim: self.workdir / "pvcs" / claim,
                                   run_id=run_id)
        deployment = yaml.safe_load(OPERATOR_DEPLOYMENT.read_text())
        ns = deployment["metadata"]["namespace"]
        pod = self.emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{deployment['metadata']['name']}-local", "namespace": ns,
            "labels": deployment["spec"]["template"]["metadata"]["labels"]}, "spec": deployment["spec"]["template"]["spec"]})
        plan = containers.plan(pod["spec"])["operator"]
        poddir = self.workdir / "pods" / ns / pod["metadata"]["name"]
        poddir.mkdir(parents=True, exist_ok=True)
        sources = containers.volumes(ns, pod, poddir, {"operator": plan})
        # Host network: the health and metrics ports move to free ones. Output defaults to the `storage` claim
        # (a pvc:// URI, as on a cluster: no file:// URIs in the container mode).
        health = free_port()
        args = [f"--liveness=http://127.0.0.1:{health}/healthz" if a.startswith("--liveness=") else a for a in plan.args or []]
        env = {"KUBETUNE_METRICS_PORT": str(free_port()), "KUBETUNE_DEFAULT_OUTPUT_URI": "pvc://storage"}
        self.operator, _ = containers.start(ns, pod, plan, sources, poddir, args=args, env=env)
        (self.workdir / "operator.log").unlink(missing_ok=True)
        (self.workdir / "operator.log").symlink_to(poddir / "operator.log")
        self.kubelet = LocalKubelet(self.emu, self.workdir / "pods", pvc_dir=self.workdir / "pvcs", pvc_map=self.pvc_map,
                                    containers=containers).start()

    def stop(self) -> None:
        """Stops every child process (trainer, vLLM, sidecar, operator): no orphans."""
        if self.kubelet is not None:
            self.kubelet.stop()
        if isinstance(self.operator, ContainerProcess):
            self.operator.stop()
        elif self.operator is not None and self.operator.poll() is None:
            os.killpg(self.operator.pid, signal.SIGTERM)
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.operator.pid, signal.SIGKILL)
        if self.emu is not None:
            self.emu.stop()

    def __enter__(self) -> LocalRun:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- driving ------------------------------------------------------------------------------
    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self.emu is not None
        meta = doc.setdefault("metadata", {})
        if doc.get("kind") != TEMPLATE:  # cluster-scoped: no namespace
            meta.setdefault("namespace", self.namespace)
        return self.emu.apply(doc)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        assert self.emu is not None
        plural = "finetunejobs" if kind == "FineTuneJob" else "modeldeployments"
        return self.emu.get("kubetune.io", "v1alpha1", plural, self.namespace, name)

    def wait(self, kind: str, name: str, done: Callable[[dict[str, Any]], str | None], on_change: Callable[[dict[str, Any]], None],
             timeout: float) -> str:
        """Poll the object until `done` returns an outcome; call `on_change` whenever its status changes."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            obj = self.get(kind, name) or {}
            status = obj.get("status")
            if status != last:
                last = status
                on_change(obj)
            outcome = done(obj)
            if outcome:
                return outcome
            refused = {**(self.kubelet.refused if self.kubelet else {}),
                       **(self.kubelet.serving.refused if self.kubelet and self.kubelet.serving else {})}
            if refused:
                raise RuntimeError("the local node cannot run: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited ({self.operator.returncode}); see {self.workdir / 'operator.log'}")
            time.sleep(0.25)
        raise TimeoutError(f"{kind}/{name} did not finish within {timeout:.0f} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing_secrets(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    """Secret references no Secret in the files satisfies. A cluster's kubelet would not start such a pod
    (CreateContainerConfigError); here it would run without the value, e.g. an endpoint without its API key."""
    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return (doc.get("metadata") or {}).get("namespace") or namespace, (doc.get("metadata") or {}).get("name", "")

    secrets = {key(d): {**(d.get("data") or {}), **(d.get("stringData") or {})} for d in docs if d["kind"] == "Secret"}
    problems = []
    for doc in docs:
        if doc["kind"] not in MODELS:
            continue
        ns, name = key(doc)
        spec = doc.get("spec") or {}
        refs = {field: spec.get(field) for field in ("apiKeySecretRef", "hubTokenSecretRef")}
        storage = ((spec.get("storage") or {}).get("credentialsSecretRef") or {}).get("name")
        if storage:
            refs |= {f"storage.credentialsSecretRef ({k})": {"name": storage, "key": k}
                     for k in (c.SECRET_KEY_ACCESS_KEY_ID, c.SECRET_KEY_SECRET_ACCESS_KEY)}
        for field, ref in refs.items():
            if ref and ref.get("key") not in secrets.get((ns, ref.get("name")), {}):
                problems.append(f"{doc['kind']}/{name}: spec.{field}: no Secret {ref.get('name')!r} with key {ref.get('key')!r} "
                                "in the given files (a local run has only the Secrets you give it with -f)")
    return problems


def _template_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What the operator would refuse of each FineTuneJob given the FineTuneTemplates in the files (the only
    templates a local run has), said before anything runs: the same plan/template.py."""
    from kubetune.plan.template import apply_template, choose_template

    templates = [d for d in docs if d["kind"] == TEMPLATE]
    problems = []
    for doc in docs:
        if doc["kind"] != "FineTuneJob":
            continue
        try:
            spec = parse(FineTuneJobSpec, doc.get("spec"))
        except SpecError:
            continue  # already reported
        try:
            chosen = choose_template(spec, templates)
            if chosen is not None:
                apply_template(spec, chosen)
        except SpecError as exc:
            problems += [f"FineTuneJob/{(doc.get('metadata') or {}).get('name', '?')}: {p}" for p in exc.problems]
    return problems


def install_operator_rbac(emu: Emulator, kubeconfig: Path, namespace: str) -> str:
    """Install the chart's rendered RBAC as a cluster admin would; return a kubeconfig of the operator's
    ServiceAccount (the operator runs with exactly the permissions the chart gives it)."""
    account = None
    # The watched namespace exists before its Roles (the emulator, like the API server, refuses objects in a
    # namespace that does not exist; only `default` exists from the start).
    emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for obj in yaml.safe_load_all(OPERATOR_RBAC.read_text()):
        if not obj:
            continue
        meta = obj["metadata"]
        if obj["kind"] == "ServiceAccount":
            account = (meta["namespace"], meta["name"])
            emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": meta["namespace"]}})
        elif obj["kind"] in ("Role", "RoleBinding"):
            meta["namespace"] = namespace  # rendered for `default`: the watched namespace of this run
        emu.apply(obj)
    if account is None:
        raise RuntimeError(f"{OPERATOR_RBAC} holds no ServiceAccount: run `make local-rbac`")
    return str(emu.write_kubeconfig(kubeconfig, {"token": emu.token(*account)}, namespace))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def finetunejob_outcome(obj: dict[str, Any]) -> str | None:
    for type_ in ("Succeeded", "Failed"):
        cond = condition(obj, type_)
        if cond and cond.get("status") == "True":
            return type_
    return None


def modeldeployment_outcome(obj: dict[str, Any]) -> str | None:
    ready = condition(obj, "Ready")
    if ready and ready.get("status") == "True":
        return "Ready"
    adapters = (obj.get("status") or {}).get("adapters") or []
    if any(a.get("state") in ("Failed", "Rejected") for a in adapters):
        return "Failed"
    return None
