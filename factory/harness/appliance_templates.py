"""OpenNebula templates of the appliances, generated from the parameter declaration (factory/model/params.py).

One source for three uses: the VM templates and the OneFlow service template the pair test registers, the
``VMTEMPLATE64`` / service body of the marketplace apps, and the ``opennebula_template`` of the marketplace
appliance YAML. User inputs, their order and the CONTEXT entries that pass them into the VM all come from
``images/params.yaml`` through factory/model/params.py.

The network is declared as OneFlow 7 declares it (upstream ``src/flow/lib/models/service_template.rb`` and
``role.rb``): the service template has a ``networks`` entry (``M|network|description| |id:``, 5 fields as
``oneflow-template instantiate`` parses them in ``one_helper/oneflowtemplate_helper.rb``) that the user picks
at instantiation (``networks_values``), and every role's ``template_contents`` binds its NIC to it with
``NETWORK_ID = "$<name>"``. A VM template published on its own has ``NIC = [ NETWORK_MODE = "auto" ]``:
OpenNebula picks a network, ``onetemplate instantiate --nic <net>`` or Sunstone replace it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.model import params

ROLES = ("superlink", "supernode")
ROLE_TITLES = {"superlink": "SuperLink", "supernode": "SuperNode"}
# The optional third role of the service: Prometheus (and Grafana where the image has it) watching the
# others, cardinality 0 by default. It boots the SuperLink's image (the OneKE appliance's way: one image,
# the role chosen at boot): its template_contents set ONEAPP_FL_APPLIANCE_ROLE=monitoring, so the VM
# starts Prometheus and no SuperLink (context/appliance/roles/monitoring.sh, docs/monitoring.md). In the
# marketplace form its ROLE entry names the SuperLink app, which export_service_template of
# marketplaceapp_ext.rb needs for every role. service_template(monitoring=True) gives it one VM and
# opens the other roles' metrics to the service network (ONEAPP_FL_METRICS_ALLOW).
MONITORING = "monitoring"
# The parameter that picks what a VM of the SuperLink image runs (images/params.yaml), and its value there.
APPLIANCE_ROLE = "ONEAPP_FL_APPLIANCE_ROLE"
MONITORING_CONTEXT = {APPLIANCE_ROLE: MONITORING}
# Parameters one role's template_contents fix: never service-level user inputs, whose values OneFlow
# writes into every role's CONTEXT (fill_template in upstream src/flow/lib/models/service.rb), over the
# role's own.
ROLE_FIXED_INPUTS = frozenset({APPLIANCE_ROLE})
# The SuperNode role's OneFlow 7 elasticity (docs/elasticity.md "The default policy of the Flower
# service", which gives the reasons): keep at least the job's minimum of SuperNodes connected.
SUPERNODE_MIN_VMS = 2
SUPERNODE_MAX_VMS = 10
SUPERNODE_COOLDOWN = 300
SUPERNODE_POLICIES: tuple[dict[str, Any], ...] = (
    {
        "type": "CHANGE",
        "adjust": 1,
        "expression": "ONEAPP_FL_CONNECTED_NODES < ONEAPP_FL_MIN_NODES",
        "period": 60,
        "period_number": 3,
    },
)
# The service's network, as the user names it at instantiation (``networks_values``).
NETWORK = "Private"
NETWORK_INPUT = (
    "M|network|Network of the SuperLink and the SuperNodes (the SuperNodes reach the SuperLink's Fleet port "
    "on it)| |id:"
)
AUTO_NIC = {"NETWORK_MODE": "auto"}
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
    """The VM template of an appliance role (OpenNebula attribute names; rendered by one/xmltemplate.py
    or one/onetemplate.py). Without ``network_id`` the NIC is ``NETWORK_MODE = "auto"``."""
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
    template["NIC"] = {"NETWORK_ID": str(network_id)} if network_id is not None else dict(AUTO_NIC)
    if sched_requirements:
        template["SCHED_REQUIREMENTS"] = sched_requirements
    if description:
        template["DESCRIPTION"] = description
    return template


def published_vm_template(role: str, arch: str) -> dict[str, Any]:
    """The VM template a marketplace app carries (``VMTEMPLATE64``, the YAML's ``opennebula_template``):
    no NAME and no DISK (the exporter appends both), an automatic NIC, every value a string (upstream's
    market driver drops a template whose values are not strings)."""
    template = vm_template(role, "", image_id=0, network_id=None, arch=arch)
    template.pop("NAME")
    template.pop("DISK")
    return template


def service_user_inputs() -> dict[str, str]:
    """Every parameter of both roles, once: the service-level ``user_inputs`` of a published service
    (``oneflow-template instantiate`` asks them once; each default pre-fills Sunstone's form)."""
    inputs = dict(role_inputs("superlink").user_inputs)
    for name, spec in role_inputs("supernode").user_inputs.items():
        if inputs.setdefault(name, spec) != spec:
            raise ValueError(f"{name} is declared differently for the SuperLink and the SuperNode")
    return {name: spec for name, spec in inputs.items() if name not in ROLE_FIXED_INPUTS}


def supernode_elasticity(cardinality: int) -> dict[str, Any]:
    """The SuperNode role's ``min_vms``, ``max_vms``, ``cooldown`` and policies for a service of
    ``cardinality`` SuperNodes (the bounds widen so that a smaller or larger test federation stays valid:
    OneFlow refuses a cardinality outside [min_vms, max_vms])."""
    return {
        "min_vms": min(SUPERNODE_MIN_VMS, cardinality),
        "max_vms": max(SUPERNODE_MAX_VMS, cardinality),
        "cooldown": SUPERNODE_COOLDOWN,
        "elasticity_policies": [dict(policy) for policy in SUPERNODE_POLICIES],
        "scheduled_policies": [],
    }


def monitoring_role(
    template_id: int | None, enabled: bool = False, context: dict[str, str] | None = None
) -> dict[str, Any]:
    """The optional :data:`MONITORING` role on the SuperLink's VM template, in monitoring mode
    (:data:`MONITORING_CONTEXT`): no VM unless ``enabled`` (cardinality 1). ``context``: further CONTEXT
    entries (the metrics port and TLS the other roles serve with)."""
    role: dict[str, Any] = {
        "name": MONITORING,
        "type": "vm",
        "cardinality": 1 if enabled else 0,
        "min_vms": 0,
        "max_vms": 1,
        "parents": ["superlink"],
        "template_contents": {
            "NIC": [{"NETWORK_ID": f"${NETWORK}"}],
            "CONTEXT": {**(context or {}), **MONITORING_CONTEXT},
        },
    }
    if template_id is not None:
        role["template_id"] = int(template_id)
    return role


def service_template(
    name: str,
    superlink_template_id: int | None,
    supernode_template_id: int | None,
    supernodes: int = 2,
    security: str | None = "tls-auth",
    extra_context: dict[str, dict[str, str]] | None = None,
    description: str = "",
    monitoring: bool = False,
    metrics_allow: str = "",
) -> dict[str, Any]:
    """The OneFlow service (OpenNebula 7 format): 1 SuperLink and ``supernodes`` SuperNodes deployed at once
    (``none``: each SuperNode finds the SuperLink through OneGate and waits for it, roles/supernode.sh), each
    role RUNNING only when its VMs reported READY (``ready_status_gate``). ``parents`` stay as upstream keeps
    them under ``none`` (src/flow/lib/strategy.rb deploys without them; ``${superlink.xpath}`` reads them).
    The SuperNode role carries the default elasticity policy (:func:`supernode_elasticity`); a third role,
    :data:`MONITORING`, has no VM unless the user asks for one (see there).

    ``monitoring=True`` gives that role its VM, and ``metrics_allow`` (the service network's CIDRs,
    required then) becomes every role's ``ONEAPP_FL_METRICS_ALLOW`` so that its Prometheus may scrape
    them; ``ONEAPP_FL_METRICS_PORT``/``_TLS`` given for the SuperLink in ``extra_context`` go to the
    monitoring role too (it scrapes with them).

    ``security`` fixes the TLS/node-auth context of a test deployment. The marketplace form has
    ``security=None`` and no template ids: the exporter (``export_service_template`` of upstream's
    marketplaceapp_ext.rb) sets each role's template from the app its ROLE entry names, and the service
    asks for every parameter of both roles as a user input instead (each with its default).

    Both forms declare the network (:data:`NETWORK`): instantiating needs ``networks_values``, e.g.
    ``[{"Private": {"id": "0"}}]``; the factory's harness gives its own network id
    (OneCloud.launch_service).
    """
    if security is not None and security not in SECURITY_CONTEXT:
        raise ValueError(f"unknown security mode {security!r} (known: {', '.join(SECURITY_CONTEXT)})")
    if monitoring and not metrics_allow.strip():
        raise ValueError(
            "monitoring=True needs metrics_allow: the CIDRs of the service network, so that the monitoring "
            "VM may scrape the other VMs (ONEAPP_FL_METRICS_ALLOW)"
        )
    extra_context = {role: dict(values) for role, values in (extra_context or {}).items()}
    if monitoring:
        for role in ROLES:
            extra_context.setdefault(role, {})["ONEAPP_FL_METRICS_ALLOW"] = metrics_allow.strip()
    roles = []
    for role, template_id, cardinality, parents in (
        ("superlink", superlink_template_id, 1, []),
        ("supernode", supernode_template_id, supernodes, ["superlink"]),
    ):
        fixed = SECURITY_CONTEXT[security][role] if security is not None else {}
        context = {**fixed, **(extra_context or {}).get(role, {})}
        entry: dict[str, Any] = {"name": role, "type": "vm", "cardinality": cardinality, "parents": parents}
        contents: dict[str, Any] = {"NIC": [{"NETWORK_ID": f"${NETWORK}"}]}
        if context:
            contents["CONTEXT"] = context
        entry["template_contents"] = contents
        if template_id is not None:
            entry["template_id"] = int(template_id)
        if role == "supernode":
            entry.update(supernode_elasticity(cardinality))
        roles.append(entry)
    scraped = {
        key: value
        for key, value in extra_context.get("superlink", {}).items()
        if key in ("ONEAPP_FL_METRICS_PORT", "ONEAPP_FL_METRICS_TLS")
    }
    roles.append(monitoring_role(superlink_template_id, monitoring, scraped))
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        # none, not straight: the SuperNodes boot with the SuperLink instead of after its READY (issue 13)
        "deployment": "none",
        "ready_status_gate": True,
        "shutdown_action": "terminate",
        "networks": {NETWORK: NETWORK_INPUT},
        "roles": roles,
    }
    if security is None:
        body["user_inputs"] = service_user_inputs()
    return body
