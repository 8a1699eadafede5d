"""OpenNebula templates of the appliances, generated from the parameter declaration (factory/params.py).

One source for three uses: the VM templates and the OneFlow service template the pair test registers, the
``VMTEMPLATE64`` / service body of the marketplace apps, and the ``opennebula_template`` of the marketplace
appliance YAML. User inputs, their order and the CONTEXT entries that pass them into the VM all come from
``images/params.yaml`` through factory/params.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory import params

ROLES = ("superlink", "supernode")
ROLE_TITLES = {"superlink": "SuperLink", "supernode": "SuperNode"}
# Per-role size of a VM. SuperNodes train; the SuperLink only coordinates.
SIZES = {
    "superlink": {"CPU": "1", "VCPU": "2", "MEMORY": "2048"},
    "supernode": {"CPU": "1", "VCPU": "2", "MEMORY": "4096"},
}
SECURITY_CONTEXT = {
    "tls-auth": {
        "superlink": {"ONEAPP_FL_TLS": "YES", "ONEAPP_FL_NODE_AUTH": "YES"},
        "supernode": {"ONEAPP_FL_TLS": "YES"},
    },
    "tls": {
        "superlink": {"ONEAPP_FL_TLS": "YES", "ONEAPP_FL_NODE_AUTH": "NO"},
        "supernode": {"ONEAPP_FL_TLS": "YES"},
    },
    "insecure": {
        "superlink": {"ONEAPP_FL_TLS": "NO", "ONEAPP_FL_NODE_AUTH": "NO"},
        "supernode": {"ONEAPP_FL_TLS": "NO"},
    },
}


@dataclass(frozen=True)
class RoleInputs:
    """A role's user inputs (upper-case names, declaration order) and the CONTEXT entries passing them on."""

    user_inputs: dict[str, str]
    inputs_order: str
    context: dict[str, str]


def role_inputs(role: str) -> RoleInputs:
    return RoleInputs(
        user_inputs=params.user_inputs(role),
        inputs_order=params.inputs_order(role),
        context=params.context_entries(role),
    )


def vm_template(
    role: str,
    name: str,
    image_id: int,
    network_id: int | None,
    ssh_public_key: str = "$USER[SSH_PUBLIC_KEY]",
    arch: str = "x86_64",
    sched_requirements: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    """The VM template of an appliance role (OpenNebula attribute names; rendered by one/xmltemplate.py)."""
    inputs = role_inputs(role)
    context = {
        "NETWORK": "YES",
        "TOKEN": "YES",
        "REPORT_READY": "YES",
        "SSH_PUBLIC_KEY": ssh_public_key,
        **inputs.context,
    }
    template: dict[str, Any] = {
        "NAME": name,
        **SIZES[role],
        "DISK": {"IMAGE_ID": str(image_id)},
        "CONTEXT": context,
        "GRAPHICS": {"LISTEN": "0.0.0.0", "TYPE": "vnc"},
        "OS": {"ARCH": arch},
        "USER_INPUTS": inputs.user_inputs,
        "INPUTS_ORDER": inputs.inputs_order,
        "LOGO": "images/logos/linux.png",
    }
    if network_id is not None:
        template["NIC"] = {"NETWORK_ID": str(network_id)}
    if sched_requirements:
        template["SCHED_REQUIREMENTS"] = sched_requirements
    if description:
        template["DESCRIPTION"] = description
    return template


def service_template(
    name: str,
    superlink_template_id: int | None,
    supernode_template_id: int | None,
    supernodes: int = 2,
    security: str | None = "tls-auth",
    extra_context: dict[str, dict[str, str]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """The OneFlow service (OpenNebula 7 format): 1 SuperLink, then ``supernodes`` SuperNodes once it is
    RUNNING (``straight``), each role RUNNING only when its VMs reported READY (``ready_status_gate``).

    ``security`` fixes the TLS/node-auth context of a test deployment. The marketplace form has
    ``security=None`` and no template ids: the importer binds the roles to the apps, and the service asks
    for every parameter of both roles as a user input instead.
    """
    if security is not None and security not in SECURITY_CONTEXT:
        raise ValueError(f"unknown security mode {security!r} (known: {', '.join(SECURITY_CONTEXT)})")
    roles = []
    for role, template_id, cardinality, parents in (
        ("superlink", superlink_template_id, 1, []),
        ("supernode", supernode_template_id, supernodes, ["superlink"]),
    ):
        fixed = SECURITY_CONTEXT[security][role] if security is not None else {}
        context = {**fixed, **(extra_context or {}).get(role, {})}
        entry: dict[str, Any] = {"name": role, "type": "vm", "cardinality": cardinality, "parents": parents}
        if context:
            entry["template_contents"] = {"CONTEXT": context}
        if template_id is not None:
            entry["template_id"] = int(template_id)
        if role == "supernode":
            entry["min_vms"] = 1
            entry["max_vms"] = max(cardinality, 10)
        roles.append(entry)
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        "deployment": "straight",
        "ready_status_gate": True,
        "shutdown_action": "terminate",
        "roles": roles,
    }
    if security is None:
        body["user_inputs"] = {**role_inputs("superlink").user_inputs, **role_inputs("supernode").user_inputs}
    return body
