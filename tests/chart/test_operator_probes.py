"""The chart's operator container, run as rendered (command, args, env) against the API emulator: its
probes' endpoint answers. Plus the chart agrees with the operator image (operator/Dockerfile)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .helm import ROOT, one, objects


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rendered_operator_serves_its_health_probe(emulator, kubectl, tmp_path):
    kubectl("apply", "-f", str(ROOT / "crds"))
    port, metrics_port = free_port(), free_port()  # not the chart's defaults: another process may hold 9090
    deployment = one(objects({"operator": {"healthPort": port}, "metrics": {"port": metrics_port},
                              "watch": {"namespaces": ["default"]},
                              "platform": {"defaultOutputUri": "s3://models/adapters"}}), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    probe_port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
    binary = str(Path(sys.executable).parent / container["command"][0])
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "KUBECONFIG": emulator.kubeconfig}
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen([binary, *container["args"]], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}{probe['path']}", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "operator.log").read_text()
                assert time.monotonic() < deadline, "no answer on the probe's endpoint: " + (tmp_path / "operator.log").read_text()
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_chart_matches_the_operator_image():
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    container = one(objects(), "Deployment")["spec"]["template"]["spec"]
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M).groups()
    assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"', dockerfile, re.M).group(1)
    assert container["containers"][0]["command"] == [entrypoint]
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile  # the root filesystem is read-only
