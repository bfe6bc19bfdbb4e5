"""
A realistic Kubernetes API emulator for tests, built on kmock (``pip install kmock``).

    from kubetune_emulator import Emulator

    with Emulator() as emu:       # serves http://127.0.0.1:<free port> from its own thread and loop
        emu.kubeconfig            # a kubeconfig file pointing at it (namespace "default")
        emu.requests              # every HTTP request served (RecordedRequest)

    with Emulator(rbac=True) as emu:  # HTTPS; bearer tokens; RBAC enforced from the stored Roles/bindings
        emu.token("ns", "sa")      # a ServiceAccount token (TokenRequest), for a kubeconfig or a token file
        emu.denials(), emu.used_permissions("system:serviceaccount:ns:sa")

See ``server.py`` for what it emulates and ``pytest_plugin.py`` for the fixtures.
"""

from kubetune_emulator.errors import ApiError
from kubetune_emulator.recording import RecordedRequest
from kubetune_emulator.registry import ResourceType
from kubetune_emulator.runner import Emulator
from kubetune_emulator.server import KubeEmulator

__all__ = ["ApiError", "Emulator", "KubeEmulator", "RecordedRequest", "ResourceType"]
