"""A pod spec as container run options: what `kubetune local --runtime podman` runs. Pure: no I/O.

`plan_pod(spec)` reads a pod spec the way a kubelet would and returns, per container, everything the
container runtime must be told; `podman_run_argv(plan, ...)` turns one plan into `podman run` options.
Anything the local node cannot honour is an error naming every such field (`UnsupportedPodSpec`), never
silently dropped: a pod spec that runs here runs with exactly the restrictions it asks for.

Honoured: command/args (image entrypoint/cmd otherwise), env (values; secretKeyRef, configMapKeyRef and
fieldRef are resolved by the kubelet from the API), volumes (emptyDir: a host folder per pod, medium
Memory under /dev/shm; configMap and secret: files; the projected ServiceAccount token volume the builders
make: token, ca.crt and namespace; persistentVolumeClaim: the claim's host folder), pod and container
securityContext (runAsUser/runAsGroup/fsGroup/supplementalGroups → --user/--group-add, runAsNonRoot checked,
readOnlyRootFilesystem → --read-only without podman's tmpfs on /tmp, capabilities → --cap-drop/--cap-add,
allowPrivilegeEscalation false → no-new-privileges, seccomp RuntimeDefault → podman's default profile,
Unconfined → unconfined), resources (cpu/memory limits → --cpus/--memory; requests only schedule),
terminationMessagePath (a host file bind-mounted there), automountServiceAccountToken (the token folder at
the standard path). Ports: every pod shares the host network, so the kubelet moves known ports (see
kubelet.py / serving.py); declared ports are returned for it.

Decided, and documented here:
* Scheduling fields (nodeSelector, tolerations, affinity, priorityClassName, topologySpreadConstraints,
  subdomain) are the scheduler's: the one local node accepts the pod as a cluster scheduler did.
* Probes: the adapter-sync readinessProbe is run by the local serving kubelet; liveness and startup probes
  (httpGet only) are health checks a kubelet runs from outside; they change nothing inside the container
  and are not run here. Other probe handlers (exec, tcpSocket, grpc) are errors.
* GPUs (`nvidia.com/gpu`, `amd.com/gpu`, `gpu.intel.com/i915` or the platform's name): a pod asking for
  more GPUs than the node offers is an error, as on a cluster where it would stay Pending (Insufficient
  nvidia.com/gpu). The process mode ignores GPU limits; the container mode does not run a GPU pod on CPU.
  A node with GPUs (`node_gpus`, e.g. from a CDI spec) passes them as CDI devices (`--device nvidia.com/gpu=N`).
* emptyDir sizeLimit is accepted and not enforced (on a cluster it is an eviction threshold, not a mount
  option).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api import constants as c

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915")

# Pod spec fields, by how the container mode treats them.
POD_HANDLED = {"containers", "volumes", "securityContext", "serviceAccountName", "serviceAccount",
               "automountServiceAccountToken", "enableServiceLinks", "terminationGracePeriodSeconds", "restartPolicy",
               "imagePullSecrets"}
POD_SCHEDULING = {"nodeSelector", "tolerations", "affinity", "priorityClassName", "priority", "schedulerName",
                  "topologySpreadConstraints", "subdomain", "preemptionPolicy"}
CONTAINER_HANDLED = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "resources", "securityContext",
                     "volumeMounts", "terminationMessagePath", "terminationMessagePolicy", "readinessProbe", "livenessProbe",
                     "startupProbe", "workingDir", "lifecycle"}
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy", "supplementalGroups", "seccompProfile"}
CONTAINER_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
                      "capabilities", "seccompProfile", "privileged"}
RESOURCES = {"cpu", "memory"}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class UnsupportedPodSpec(ValueError):
    """The pod spec asks for something the container mode cannot honour; `problems` names every field."""

    def __init__(self, problems: list[str]):
        super().__init__("the container mode cannot honour: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Mount:
    volume: str
    kind: str  # emptyDir | memory | configMap | secret | token | pvc
    path: str
    read_only: bool
    source: str | None = None  # ConfigMap / Secret name, claim name


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    command: list[str] | None  # replaces the image's ENTRYPOINT (and CMD), like Kubernetes `command`
    args: list[str] | None  # replaces the image's CMD
    user: int | None
    group: int | None
    groups: tuple[int, ...]
    read_only_root: bool
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    no_new_privileges: bool
    seccomp: str  # RuntimeDefault | Unconfined
    cpus: str | None
    memory: int | None  # bytes
    gpus: int
    mounts: tuple[Mount, ...]
    termination_message_path: str
    fallback_to_logs: bool
    working_dir: str | None
    ports: tuple[tuple[str, int], ...] = field(default=())


def cpus(quantity: Any) -> str:
    """A Kubernetes CPU quantity ("2", "500m") as podman --cpus."""
    text = str(quantity)
    return f"{int(text[:-1]) / 1000:g}" if text.endswith("m") else f"{float(text):g}"


def memory_bytes(quantity: Any) -> int:
    text = str(quantity)
    for suffix in sorted(UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * UNITS[suffix])
    return int(float(text))


def _unknown(where: str, obj: dict[str, Any], known: set[str]) -> list[str]:
    return [f"{where}.{key}" for key in sorted(set(obj) - known)]


def _volumes(spec: dict[str, Any], problems: list[str]) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """volume name -> (kind, source name, the volume)."""
    out: dict[str, tuple[str, str | None, dict[str, Any]]] = {}
    for i, vol in enumerate(spec.get("volumes") or []):
        where = f"spec.volumes[{vol.get('name', i)}]"
        kinds = sorted(set(vol) - {"name"})
        if len(kinds) != 1:
            problems.append(f"{where}: one volume source expected, got {kinds}")
            continue
        kind = kinds[0]
        source = vol[kind] or {}
        if kind == "emptyDir":
            problems += _unknown(f"{where}.emptyDir", source, {"medium", "sizeLimit"})
            if source.get("medium") not in (None, "", "Memory"):
                problems.append(f"{where}.emptyDir.medium: {source['medium']!r}")
            out[vol["name"]] = ("memory" if source.get("medium") == "Memory" else "emptyDir", None, vol)
        elif kind == "configMap":
            problems += _unknown(f"{where}.configMap", source, {"name", "items", "defaultMode", "optional"})
            out[vol["name"]] = ("configMap", source.get("name"), vol)
        elif kind == "secret":
            problems += _unknown(f"{where}.secret", source, {"secretName", "items", "defaultMode", "optional"})
            out[vol["name"]] = ("secret", source.get("secretName"), vol)
        elif kind == "persistentVolumeClaim":
            problems += _unknown(f"{where}.persistentVolumeClaim", source, {"claimName", "readOnly"})
            out[vol["name"]] = ("pvc", source.get("claimName"), vol)
        elif kind == "projected":
            problems += _projected(where, source)
            out[vol["name"]] = ("token", None, vol)
        else:
            out[vol["name"]] = ("unsupported", None, vol)  # named once, here: not again for each mount
            problems.append(f"{where}.{kind}: volume type not supported (emptyDir, configMap, secret, "
                            "persistentVolumeClaim and the ServiceAccount token projection are)")
    return out


def _projected(where: str, source: dict[str, Any]) -> list[str]:
    """Only the ServiceAccount token projection (token + kube-root-ca.crt + namespace), as kubelet builds it."""
    problems = _unknown(f"{where}.projected", source, {"sources", "defaultMode"})
    for j, src in enumerate(source.get("sources") or []):
        at = f"{where}.projected.sources[{j}]"
        if "serviceAccountToken" in src:
            problems += _unknown(f"{at}.serviceAccountToken", src["serviceAccountToken"], {"path", "expirationSeconds", "audience"})
        elif "configMap" in src and src["configMap"].get("name") == "kube-root-ca.crt":
            continue
        elif "downwardAPI" in src and [i.get("fieldRef", {}).get("fieldPath") for i in src["downwardAPI"].get("items") or []] == ["metadata.namespace"]:
            continue
        else:
            problems.append(f"{at}: only the ServiceAccount token projection (token, kube-root-ca.crt, namespace) is supported")
    return problems


def _env_problems(where: str, ctr: dict[str, Any]) -> list[str]:
    problems = []
    for item in ctr.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            continue
        kinds = set(source)
        if not kinds <= {"secretKeyRef", "configMapKeyRef", "fieldRef"}:
            problems += [f"{where}.env[{item['name']}].valueFrom.{k}" for k in sorted(kinds - {"secretKeyRef", "configMapKeyRef", "fieldRef"})]
        path = (source.get("fieldRef") or {}).get("fieldPath", "metadata.name")
        if not (path in ("metadata.name", "metadata.namespace", "metadata.uid", "spec.serviceAccountName", "status.podIP")
                or path.startswith("metadata.annotations[") or path.startswith("metadata.labels[")):
            problems.append(f"{where}.env[{item['name']}].valueFrom.fieldRef.fieldPath: {path!r}")
    return problems


def _probe_problems(where: str, ctr: dict[str, Any]) -> list[str]:
    problems = []
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in ctr and "httpGet" not in ctr[probe]:
            problems.append(f"{where}.{probe}: only httpGet probes are supported")
    lifecycle = ctr.get("lifecycle") or {}
    if set(lifecycle) - {"preStop"} or set(lifecycle.get("preStop") or {}) - {"sleep"}:
        problems.append(f"{where}.lifecycle: only a preStop sleep is supported (the serving pods' drain, kubetune_local.serving)")
    return problems


def plan_pod(spec: dict[str, Any], *, node_gpus: int = 0, gpu_resources: tuple[str, ...] = GPU_RESOURCES) -> dict[str, ContainerPlan]:
    """Every container of the pod spec as a ContainerPlan; raises UnsupportedPodSpec naming every field the
    container mode cannot honour (all of them, not the first)."""
    problems = _unknown("spec", spec, POD_HANDLED | POD_SCHEDULING)
    pod_sc = spec.get("securityContext") or {}
    problems += _unknown("spec.securityContext", pod_sc, POD_SECURITY)
    if spec.get("enableServiceLinks", True) is not False:
        problems.append("spec.enableServiceLinks: Service env vars are not injected here; set it to false")
    if spec.get("restartPolicy", "Always") not in ("Always", "Never", "OnFailure"):
        problems.append(f"spec.restartPolicy: {spec['restartPolicy']!r}")
    volumes = _volumes(spec, problems)
    automount = spec.get("automountServiceAccountToken", True) is not False
    plans: dict[str, ContainerPlan] = {}
    for ctr in spec.get("containers") or []:
        where = f"spec.containers[{ctr.get('name')}]"
        problems += _unknown(where, ctr, CONTAINER_HANDLED)
        problems += _env_problems(where, ctr) + _probe_problems(where, ctr)
        sc = ctr.get("securityContext") or {}
        problems += _unknown(f"{where}.securityContext", sc, CONTAINER_SECURITY)
        if sc.get("privileged"):
            problems.append(f"{where}.securityContext.privileged: privileged containers are not run here")
        caps = sc.get("capabilities") or {}
        problems += _unknown(f"{where}.securityContext.capabilities", caps, {"drop", "add"})
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            if user is None:
                problems.append(f"{where}.securityContext.runAsNonRoot: needs runAsUser here (the image's USER is not checked)")
            elif int(user) == 0:
                problems.append(f"{where}.securityContext.runAsUser: 0 contradicts runAsNonRoot (kubelet refuses to start it)")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {"type": "RuntimeDefault"}).get("type")
        if seccomp not in ("RuntimeDefault", "Unconfined"):
            problems.append(f"{where}.securityContext.seccompProfile.type: {seccomp!r} (RuntimeDefault or Unconfined)")
        limits = (ctr.get("resources") or {}).get("limits") or {}
        requests = (ctr.get("resources") or {}).get("requests") or {}
        problems += _unknown(f"{where}.resources", ctr.get("resources") or {}, {"limits", "requests"})
        gpus = 0
        for name in sorted(set(limits) | set(requests)):
            if name in RESOURCES:
                continue
            if name in gpu_resources:
                gpus = int(limits.get(name, requests.get(name)))
                if gpus > node_gpus:
                    problems.append(f"{where}.resources.limits[{name}]: {gpus} GPU(s) asked, this node offers {node_gpus} "
                                    "(on a cluster the pod would stay Pending); run GPU pods where GPUs are, or set gpus: 0")
            else:
                problems.append(f"{where}.resources.limits[{name}]: extended resource not offered by the local node")
        mounts: list[Mount] = []
        for m in ctr.get("volumeMounts") or []:
            problems += _unknown(f"{where}.volumeMounts[{m.get('name')}]", m, {"name", "mountPath", "readOnly"})
            if m.get("name") not in volumes:
                problems.append(f"{where}.volumeMounts[{m.get('name')}]: no such volume")
                continue
            kind, source, vol = volumes[m["name"]]
            if kind == "unsupported":
                continue
            read_only = bool(m.get("readOnly")) or kind in ("configMap", "secret", "token") \
                or bool((vol.get("persistentVolumeClaim") or {}).get("readOnly"))
            mounts.append(Mount(m["name"], kind, m["mountPath"], read_only, source))
        if automount and not any(m.path == SERVICE_ACCOUNT_DIR for m in mounts):
            mounts.append(Mount("kube-api-access", "token", SERVICE_ACCOUNT_DIR, True))
        groups = tuple(int(g) for g in [pod_sc["fsGroup"]] * ("fsGroup" in pod_sc) + list(pod_sc.get("supplementalGroups") or []))
        if not ctr.get("image"):
            problems.append(f"{where}.image: missing")
        plans[ctr.get("name", "?")] = ContainerPlan(
            name=ctr.get("name", "?"), image=ctr.get("image", ""), command=ctr.get("command"), args=ctr.get("args"),
            user=None if user is None else int(user), group=None if group is None else int(group), groups=groups,
            read_only_root=bool(sc.get("readOnlyRootFilesystem")),
            cap_drop=tuple(caps.get("drop") or ()), cap_add=tuple(caps.get("add") or ()),
            no_new_privileges=sc.get("allowPrivilegeEscalation") is False, seccomp=seccomp or "RuntimeDefault",
            cpus=cpus(limits["cpu"]) if "cpu" in limits else None,
            memory=memory_bytes(limits["memory"]) if "memory" in limits else None, gpus=gpus, mounts=tuple(mounts),
            termination_message_path=ctr.get("terminationMessagePath") or c.TERMINATION_LOG,
            fallback_to_logs=ctr.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            working_dir=ctr.get("workingDir"),
            ports=tuple((p.get("name", ""), int(p["containerPort"])) for p in ctr.get("ports") or []))
        for p in ctr.get("ports") or []:
            problems += _unknown(f"{where}.ports[{p.get('name', p.get('containerPort'))}]", p, {"name", "containerPort", "protocol"})
            if p.get("protocol", "TCP") != "TCP":
                problems.append(f"{where}.ports[{p.get('name')}].protocol: {p['protocol']!r}")
    if not plans:
        problems.append("spec.containers: none")
    if problems:
        raise UnsupportedPodSpec(problems)
    return plans


def podman_run_argv(plan: ContainerPlan, *, name: str, image: str, env: dict[str, str], sources: dict[str, str],
                    termination_file: str, args: list[str] | None = None, gpu_devices: tuple[str, ...] = ()) -> list[str]:
    """`podman run` arguments (after `podman run`) for one planned container. `sources`: volume name -> host
    path; `args`: the container's args after the kubelet moved ports (default: plan.args)."""
    argv = ["--name", name, "--network", "host", "--pull", "never"]
    if plan.user is not None:
        argv += ["--user", f"{plan.user}:{plan.group if plan.group is not None else 0}"]
    for group in plan.groups:
        argv += ["--group-add", str(group)]
    if plan.read_only_root:
        argv += ["--read-only", "--read-only-tmpfs=false"]  # no tmpfs on /tmp, /var/tmp, /run: as on a cluster
    argv += [f"--cap-drop={cap}" for cap in plan.cap_drop] + [f"--cap-add={cap}" for cap in plan.cap_add]
    if plan.no_new_privileges:
        argv += ["--security-opt", "no-new-privileges"]
    if plan.seccomp == "Unconfined":
        argv += ["--security-opt", "seccomp=unconfined"]
    if plan.cpus:
        argv += ["--cpus", plan.cpus]
    if plan.memory:
        argv += ["--memory", str(plan.memory)]
    argv += [f"--device={dev}" for dev in gpu_devices[: plan.gpus]]
    for mount in plan.mounts:
        argv += ["--volume", f"{sources[mount.volume]}:{mount.path}:{'ro' if mount.read_only else 'rw'}"]
    argv += ["--volume", f"{termination_file}:{plan.termination_message_path}:rw"]
    for key, value in sorted(env.items()):
        argv += ["--env", f"{key}={value}"]
    if plan.working_dir:
        argv += ["--workdir", plan.working_dir]
    args = plan.args if args is None else args
    if plan.command is not None:
        argv += ["--entrypoint", plan.command[0], image, *plan.command[1:], *(args or [])]
    else:
        argv += [image, *(args or [])]
    return argv
