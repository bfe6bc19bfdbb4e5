"""Pod Security Standards "restricted" (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
checked on a pod spec the way the PodSecurity admission controller does, plus kubetune's own rule: a
read-only root filesystem with every writable path an explicit volume.

`violations(pod_spec)` returns one line per broken rule (empty: the pod is admitted under
`pod-security.kubernetes.io/enforce: restricted`).
"""

from __future__ import annotations

from typing import Any

# Baseline: capabilities a container may add; restricted allows only NET_BIND_SERVICE.
RESTRICTED_ADD_CAPS = {"NET_BIND_SERVICE"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (Pod, Deployment, Job, StatefulSet, DaemonSet, ReplicaSet, CronJob)."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    return None


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        out += [(f"{field}[{c.get('name')}]", c) for c in spec.get(field) or []]
    return out


def violations(spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    # --- baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            problems.append(f"volume {volume['name']} is a hostPath")
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} has type {sorted(kinds - RESTRICTED_VOLUME_TYPES)} (restricted allows {sorted(RESTRICTED_VOLUME_TYPES)})")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl.get('name')}")
    if (pod_sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
        problems.append("pod seLinuxOptions.type is not allowed")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    if "windowsOptions" in pod_sc and (pod_sc["windowsOptions"] or {}).get("hostProcess"):
        problems.append("pod is a Windows hostProcess")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_OK:
        problems.append(f"pod seccompProfile is {pod_seccomp}")
    for where, container in _containers(spec):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type is not allowed")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: Windows hostProcess")
        # --- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (pod_non_root and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in SECCOMP_OK:
            problems.append(f"{where}: seccompProfile is {seccomp} (needs RuntimeDefault or Localhost)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        added = set(caps.get("add") or []) - RESTRICTED_ADD_CAPS
        if added:
            problems.append(f"{where}: adds capabilities {sorted(added)}")
        # --- kubetune: read-only root filesystem; writable paths are explicit volumes
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        volumes = {v["name"] for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                problems.append(f"{where}: mounts undeclared volume {mount['name']}")
    return problems

