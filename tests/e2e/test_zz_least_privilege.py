"""Least privilege, the other way round: every permission the chart grants the operator, and every one the
operator grants a trainer, was used by some e2e test of this session (a missing one already fails the
test that needed it: the emulator enforces RBAC and every 403 to the operator fails its test).

"Used" is what the emulator recorded for that identity: allowed requests, and the permissions admission
relied on: RBAC escalation prevention when the operator created a pod's Role, OwnerReferencesPermission-
Enforcement (update on the owner's finalizers) when it created a child with blockOwnerDeletion. The file runs last (pytest's order)
and judges only a session that ran every e2e test; a partial run skips it.
"""

from __future__ import annotations

import pytest

from kubetune_emulator.rbac import granted_atoms

from ..security.objects import finetunejob_children
from .rbac import CHART_VALUES, DESELECTED, RECORDED, USAGE, chart_rbac

# Granted though no e2e test makes the operator use them; each says why it is needed anyway.
NOT_EXERCISED: set[tuple[str, str, str]] = set()


@pytest.fixture
def whole_session(request) -> None:
    here = request.node.path.parent
    others = [item for item in request.session.items
              if item.path.parent == here and item is not request.node and "cluster" in item.fixturenames]
    missing = [item.nodeid for item in others if item.nodeid not in RECORDED] + sorted(DESELECTED)
    if not others or missing:
        pytest.skip(f"judges only a run of every e2e test ({len(missing)} did not run in this session)")


def test_every_permission_the_chart_grants_the_operator_is_used(whole_session):
    granted = granted_atoms(rule for obj in chart_rbac(CHART_VALUES) if obj["kind"] in ("Role", "ClusterRole")
                            for rule in obj["rules"])
    unused = sorted(granted - USAGE.get("operator", set()) - NOT_EXERCISED)
    assert not unused, f"chart rules nobody used in the e2e tests (remove them, or test what needs them): {unused}"


def test_every_permission_the_operator_grants_a_trainer_is_used(whole_session):
    role = next(obj for obj in finetunejob_children() if obj["kind"] == "Role")
    unused = sorted(granted_atoms(role["rules"]) - USAGE.get("trainer", set()))
    assert not unused, f"trainer Role rules the trainer never used: {unused}"
