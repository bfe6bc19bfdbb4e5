"""The container mode's guard: every pod spec the operator builds (for every example, the quickstart and the
chart's own operator Deployment) maps to container run options, and anything the container mode cannot
honour is an error naming the field. Pure: no podman needed (tests/local/test_container_mode.py runs them)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from kubetune.config import OperatorSettings
from kubetune_local.containers import SERVICE_ACCOUNT_DIR, UnsupportedPodSpec, plan_pod, podman_run_argv
from kubetune_local.run import OPERATOR_DEPLOYMENT, OPERATOR_RBAC_VALUES

from ..chart.helm import find, objects
from ..examples.test_examples import WORKLOADS, built_children, load, platform_settings
from ..security.pss import pod_spec_of

ROOT = Path(__file__).resolve().parents[2]


def built_pod_specs(doc: dict, settings: OperatorSettings) -> list[dict]:
    """The pod specs the operator's real builders make for a manifest (a LeaderWorkerSet's leader and worker)."""
    children = built_children(doc, settings)
    groups = [c["spec"]["leaderWorkerTemplate"] for c in children if c["kind"] == "LeaderWorkerSet"]
    return [spec for spec in map(pod_spec_of, children) if spec is not None] + [
        group[role]["spec"] for group in groups for role in ("leaderTemplate", "workerTemplate")]


def gpus_asked(spec: dict) -> int:
    return max(int((ctr.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0)) for ctr in spec["containers"])


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_example_pod_spec_maps_to_container_options(name):
    """On a node with the GPUs it asks for; GPU-less pods also on a node with none. (FineTuneTemplates build no
    pods: a job naming one is built with it applied.)"""
    specs = built_pod_specs(load(name), platform_settings())
    assert specs
    for spec in specs:
        plans = plan_pod(spec, node_gpus=gpus_asked(spec))
        assert set(plans) == {ctr["name"] for ctr in spec["containers"]}
        for plan in plans.values():
            assert plan.read_only_root and plan.cap_drop == ("ALL",) and plan.no_new_privileges and plan.user == 1000
            assert plan.seccomp == "RuntimeDefault" and plan.groups == (1000,)


def test_a_gpu_pod_on_a_node_without_gpus_is_refused_naming_the_field():
    """The process mode ignores GPU limits; the container mode does not run a GPU pod on CPU (on a cluster it
    would stay Pending)."""
    spec = built_pod_specs(load("sft-lora.yaml"), platform_settings())[0]
    with pytest.raises(UnsupportedPodSpec, match=r"spec\.containers\[trainer\]\.resources\.limits\[nvidia\.com/gpu\]: 1 GPU"):
        plan_pod(spec, node_gpus=0)


def test_the_quickstart_maps_on_a_cpu_node():
    settings = OperatorSettings.from_env({"KUBETUNE_DEFAULT_OUTPUT_URI": "pvc://storage"})
    for file in ("finetunejob.yaml", "modeldeployment.yaml"):
        doc = yaml.safe_load((ROOT / "examples" / "quickstart" / file).read_text())
        for spec in built_pod_specs(doc, settings):
            assert plan_pod(spec, node_gpus=0)


def test_the_charts_operator_deployment_maps():
    spec = yaml.safe_load(OPERATOR_DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    plan = plan_pod(spec)["operator"]
    assert plan.command == ["kubetune"] and plan.args[0] == "operator"
    # automountServiceAccountToken: the chart ServiceAccount's token at the standard path
    assert [(m.kind, m.path) for m in plan.mounts] == [("emptyDir", "/tmp"), ("token", SERVICE_ACCOUNT_DIR)]


def test_the_rendered_operator_deployment_is_the_charts():
    """The container mode runs the operator as the chart's Deployment does: a checked-in rendering, kept in step."""
    deployment = find(objects(OPERATOR_RBAC_VALUES), "Deployment")[0]
    rendered = ("# GENERATED from charts/kubetune (templates/deployment.yaml) with values "
                f"{OPERATOR_RBAC_VALUES}: the operator `kubetune local --runtime podman` runs.\n"
                "# Do not edit: KUBETUNE_UPDATE_RENDERED=1 pytest tests/local/test_containers.py rewrites it.\n"
                + yaml.safe_dump(deployment, sort_keys=False))
    if os.environ.get("KUBETUNE_UPDATE_RENDERED") == "1":
        OPERATOR_DEPLOYMENT.write_text(rendered)
    assert OPERATOR_DEPLOYMENT.read_text() == rendered, f"{OPERATOR_DEPLOYMENT} is stale"


def test_unsupported_fields_are_errors_naming_every_one():
    spec = copy.deepcopy(built_pod_specs(load("sft-lora.yaml"), platform_settings())[0])
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/lib"}})
    spec["volumes"].append({"name": "weird", "nfs": {"server": "x", "path": "/"}})
    trainer = spec["containers"][0]
    trainer["securityContext"]["privileged"] = True
    trainer["securityContext"]["seLinuxOptions"] = {"level": "s0"}
    trainer["envFrom"] = [{"configMapRef": {"name": "x"}}]
    trainer["env"].append({"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}})
    trainer["volumeMounts"].append({"name": "host", "mountPath": "/host", "subPath": "x"})
    trainer["lifecycle"] = {"preStop": {"exec": {"command": ["true"]}}}
    trainer["livenessProbe"] = {"exec": {"command": ["true"]}}
    trainer["resources"]["limits"]["example.com/fpga"] = "1"
    with pytest.raises(UnsupportedPodSpec) as err:
        plan_pod(spec, node_gpus=1)
    assert sorted(err.value.problems) == sorted([
        "spec.hostNetwork",
        "spec.volumes[host].hostPath: volume type not supported (emptyDir, configMap, secret, persistentVolumeClaim and "
        "the ServiceAccount token projection are)",
        "spec.volumes[weird].nfs: volume type not supported (emptyDir, configMap, secret, persistentVolumeClaim and "
        "the ServiceAccount token projection are)",
        "spec.containers[trainer].lifecycle: only a preStop sleep is supported (the serving pods' drain, kubetune_local.serving)",
        "spec.containers[trainer].envFrom",
        "spec.containers[trainer].env[CPU].valueFrom.resourceFieldRef",
        "spec.containers[trainer].livenessProbe: only httpGet probes are supported",
        "spec.containers[trainer].securityContext.seLinuxOptions",
        "spec.containers[trainer].securityContext.privileged: privileged containers are not run here",
        "spec.containers[trainer].resources.limits[example.com/fpga]: extended resource not offered by the local node",
        "spec.containers[trainer].volumeMounts[host].subPath",
    ])


def test_run_as_root_and_service_links_are_refused():
    spec = copy.deepcopy(built_pod_specs(load("sft-lora.yaml"), platform_settings())[0])
    spec["securityContext"]["runAsUser"] = 0
    del spec["enableServiceLinks"]
    with pytest.raises(UnsupportedPodSpec) as err:
        plan_pod(spec, node_gpus=1)
    assert err.value.problems == ["spec.enableServiceLinks: Service env vars are not injected here; set it to false",
                                  "spec.containers[trainer].securityContext.runAsUser: 0 contradicts runAsNonRoot "
                                  "(kubelet refuses to start it)"]


def test_the_trainer_pod_as_podman_options():
    """The whole `podman run` command for the quickstart's trainer pod, security context included."""
    doc = yaml.safe_load((ROOT / "examples" / "quickstart" / "finetunejob.yaml").read_text())
    spec = built_pod_specs(doc, OperatorSettings.from_env({"KUBETUNE_DEFAULT_OUTPUT_URI": "pvc://storage"}))[0]
    plan = plan_pod(spec)["trainer"]
    sources = {m.volume: f"/host/{m.volume}" for m in plan.mounts}
    argv = podman_run_argv(plan, name="kt-x", image="ghcr.io/kubetune/trainer:0.1.0", env={"A": "1"}, sources=sources,
                           termination_file="/host/termination-log")
    assert argv == [
        "--name", "kt-x", "--network", "host", "--pull", "never", "--user", "1000:1000", "--group-add", "1000",
        "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt", "no-new-privileges",
        "--cpus", "2", "--memory", str(6 * 2**30),
        "--volume", "/host/config:/etc/kubetune:ro", "--volume", "/host/work:/work:rw", "--volume", "/host/tmp:/tmp:rw",
        "--volume", "/host/dshm:/dev/shm:rw", "--volume", f"/host/kube-api-access:{SERVICE_ACCOUNT_DIR}:ro",
        "--volume", "/host/pvc-storage:/mnt/pvc/storage:rw",
        "--volume", "/host/termination-log:/dev/termination-log:rw",
        "--env", "A=1", "ghcr.io/kubetune/trainer:0.1.0", "--config", "/etc/kubetune/config.json"]
