"""The container runtime of `kubetune local --runtime podman`: podman as root, with the settings this kind
of host needs (runc; cgroupfs; no default ulimits; see docs/images.md) in a containers.conf of its own.

A container is `podman run` attached (its output goes to the pod's log file, its exit status is the
container's, as a kubelet reports it); `ContainerProcess` answers like the `subprocess.Popen` the process
mode uses (poll, wait, returncode, send_signal), and `stop(grace)` is `podman stop -t grace` (SIGTERM,
SIGKILL after the grace period). When a container has ended, `finish()` records `podman diff` (every path
it changed outside its volumes; with a read-only root there must be none) and removes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger("kubetune_local")

CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
# Paths podman itself creates in a container as mount points or for its own use: not written by the process.
PODMAN_OWN = ("/dev", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run", "/proc", "/sys", "/etc/passwd", "/etc/group")


def available() -> bool:
    return shutil.which("podman") is not None


SHARED_CONF = Path(__file__).resolve().parents[2] / "images" / "containers.conf"  # what `make images` uses


class Podman:
    def __init__(self, confdir: Path):
        conf = SHARED_CONF
        if not conf.exists():
            confdir.mkdir(parents=True, exist_ok=True)
            conf = confdir / "containers.conf"
            conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def image_exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def run(self, run_argv: list[str], logfile: Path, grace: float) -> ContainerProcess:
        name = run_argv[run_argv.index("--name") + 1]
        self("rm", "-f", "--ignore", name, check=False)  # a previous run of the same container (a restart)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(["podman", "run", "--sig-proxy=false", *run_argv], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        mounts = tuple(run_argv[i + 1].split(":")[1] for i, arg in enumerate(run_argv) if arg == "--volume")
        return ContainerProcess(self, name, proc, grace, logfile.with_suffix(".diff"), mounts)


class ContainerProcess:
    """One running container, with the part of subprocess.Popen's interface the local kubelet uses."""

    def __init__(self, podman: Podman, name: str, proc: subprocess.Popen, grace: float, diff_file: Path, mounts: tuple[str, ...]):
        self.podman, self.name, self.proc, self.grace, self.diff_file = podman, name, proc, grace, diff_file
        self.mounts = mounts
        self.finished = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and not self.finished:
            self.finish()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self.poll()
        return code

    def send_signal(self, sig: int) -> None:
        """A signal to the container's main process (SIGTERM on suspend, cancel, preemption)."""
        self.podman("kill", "--signal", signal.Signals(sig).name, self.name, check=False)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the grace period (terminationGracePeriodSeconds), as a kubelet does."""
        if self.proc.poll() is None:
            grace = self.grace if grace is None else grace
            self.podman("stop", "-t", str(int(grace)), self.name, check=False, timeout=grace + 60)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.poll()

    def finish(self) -> None:
        """Record what the container wrote outside its volumes (`podman diff`), then remove it."""
        self.finished = True
        diff = self.podman("diff", self.name, check=False)
        changed = [line for line in diff.stdout.splitlines() if line.strip() and not _runtime_made(line.split(maxsplit=1)[-1], self.mounts)]
        self.diff_file.write_text("".join(f"{line}\n" for line in changed))
        if changed:
            log.error("container %s wrote outside its volumes: %s", self.name, ", ".join(changed[:10]))
        self.podman("rm", "-f", "--ignore", self.name, check=False)


def _runtime_made(path: str, mounts: tuple[str, ...]) -> bool:
    """A path the runtime made (its own files, a volume's mount point and the folders above it) or inside a
    volume: not a write by the container's processes to its root filesystem."""
    return any(path == own or path.startswith(own + "/") or own.startswith(path.rstrip("/") + "/") for own in PODMAN_OWN) or \
        any(path == m or m.startswith(path.rstrip("/") + "/") or path.startswith(m + "/") for m in mounts)


def outside_writes(folder: Path) -> dict[str, list[str]]:
    """{container diff file: changed paths} for every container run under `folder` that wrote outside its volumes."""
    return {str(f): f.read_text().splitlines() for f in sorted(folder.rglob("*.diff")) if f.read_text().strip()}
