"""The Kubernetes rights of the gateway's ServiceAccount: the contract the chart renders (and tests run under).

No ClusterRole binding reaches beyond the tenants: the rules below are bound with a RoleBinding in each tenant
namespace (the chart's list of tenants) and one in the gateway's own namespace (the key Secrets). A namespace
that is not a tenant's is invisible to the gateway, whatever a key Secret says.
"""

from __future__ import annotations

from typing import Any

GROUP = "kubetune.io"

# In every tenant namespace.
TENANT_RULES: list[dict[str, Any]] = [
    # Jobs: create (POST /v1/fine_tuning/jobs), list (list, concurrency limit), get (retrieve, events,
    # checkpoints), patch (cancel = spec.cancel, pause/resume = spec.suspend). Never delete: a job's history stays.
    {"apiGroups": [GROUP], "resources": ["finetunejobs"], "verbs": ["get", "list", "create", "patch"]},
    # Job events (GET /v1/fine_tuning/jobs/{id}/events): the operator's Events on the FineTuneJob.
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
]

# In the gateway's own namespace (settings.keysNamespace): read one API-key Secret by its hashed name.
KEYS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]

# In each namespace of the platform's shared ModelDeployments (settings.baseModels.*.serving): read one to route
# to it (status.endpoint, adapters' states), and add/remove a succeeded API job's adapter entry (a JSON patch of
# that one entry of spec.adapters). Never create or delete ModelDeployments.
SERVING_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["get", "patch"]},
]

ROLE_TENANT = "kubetune-gateway-tenant"
ROLE_KEYS = "kubetune-gateway-keys"
ROLE_SERVING = "kubetune-gateway-serving"


def rbac_objects(service_account: str, sa_namespace: str, tenants: list[str],
                 serving: list[str] = ()) -> list[dict[str, Any]]:
    """The ClusterRole (tenant rules, bound per tenant namespace only), the keys Role and the bindings."""
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}]
    out: list[dict[str, Any]] = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": ROLE_TENANT},
         "rules": TENANT_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": ROLE_KEYS, "namespace": sa_namespace}, "rules": KEYS_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": ROLE_KEYS, "namespace": sa_namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_KEYS}, "subjects": subject},
    ]
    for namespace in tenants:
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": ROLE_TENANT, "namespace": namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE_TENANT},
                    "subjects": subject})
    for namespace in sorted(set(serving)):
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": ROLE_SERVING, "namespace": namespace}, "rules": SERVING_RULES})
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": ROLE_SERVING, "namespace": namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_SERVING},
                    "subjects": subject})
    return out
