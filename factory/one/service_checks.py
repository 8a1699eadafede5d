"""Checks of a OneFlow service template and its user input values that OneFlow itself does not make.

OneFlow (OpenNebula/one at f847cf2e, src/flow/) accepts, and so the factory must refuse before sending:

- ``parents`` naming the role itself, a role the template lacks, or forming a cycle:
  ``ServiceTemplate.validate`` (src/oca/ruby/opennebula/flow/service_template.rb) never reads them; the
  straight strategy (src/flow/lib/strategy/straight.rb ``roles_deploy``) then finds no role to deploy and the
  service stays in DEPLOYING_NETS with no log line, where ``DELETE /service/<id>`` answers 500
  (LifeCycleManager.rb ``undeploy_action``: "Service cannot be undeployed in state: ...");
- integer keys given a fraction (``Validator.validate_integer`` calls Ruby's ``Integer()``, which truncates
  1.5 to 1) or a non-finite number (``Integer(Infinity)`` raises FloatDomainError: a 500);
- user input values of the wrong type: ``check_user_inptus`` (src/flow/oneflow-server.rb) only checks that
  each input has a value; the type rules live in the Ruby CLI's prompt alone (src/cli/one_helper.rb
  ``OpenNebulaHelper.parse_user_inputs``; INT_EXP and FLOAT_EXP of onetemplate_helper.rb).

And, so that a bad policy fails here rather than at OneFlow, the checks OneFlow does make on elasticity and
scheduled policies (``validate_vmvalues`` and the policy schema), with the same code the test cloud's OneFlow
runs (``hostkit.elasticity.validate_template``, docs/elasticity.md), and a monitoring role asked to boot
the SuperLink's template without ONEAPP_FL_APPLIANCE_ROLE=monitoring in its CONTEXT (it would start a
second SuperLink: factory/harness/appliance_templates.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from hostkit import elasticity
from hostkit.errors import FactoryError

# The parameter that makes a VM of the SuperLink image run the monitoring role (images/params.yaml).
APPLIANCE_ROLE = "ONEAPP_FL_APPLIANCE_ROLE"
# Keys the OneFlow schema (src/oca/ruby/opennebula/flow/service_template.rb) declares as integers.
ROLE_INTEGER_KEYS = ("cardinality", "min_vms", "max_vms", "cooldown", "template_id")
POLICY_INTEGER_KEYS = ("adjust", "min_adjust_step", "period_number", "period", "cooldown")

_INT_EXP = re.compile(r"-?\d+")
_FLOAT_EXP = re.compile(r"-?\d+(\.\d+)?")


def _integer_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value!r} is not an integer"
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{value!r} is not a finite number (OneFlow answers 500)"
        return f"{value!r} is not an integer (OneFlow would truncate it to {int(value)})"
    return None


def check_integers(template: dict[str, Any]) -> None:
    """Every integer key of every role and of its policies holds an integer."""
    for role in template.get("roles") or []:
        name = role.get("name", "?")
        for key in ROLE_INTEGER_KEYS:
            if key in role and (problem := _integer_problem(role[key])) is not None:
                raise FactoryError(f"service template: role '{name}': {key}: {problem}")
        for kind in ("elasticity_policies", "scheduled_policies"):
            for number, policy in enumerate(role.get(kind) or []):
                for key in POLICY_INTEGER_KEYS:
                    if key in policy and (problem := _integer_problem(policy[key])) is not None:
                        raise FactoryError(
                            f"service template: role '{name}': {kind}[{number}].{key}: {problem}"
                        )


def check_parents(roles: Iterable[dict[str, Any]]) -> None:
    """Every role's ``parents`` names another role of the template, and no chain of parents comes back."""
    roles = list(roles)
    names = [str(role.get("name")) for role in roles]
    parents = {str(role.get("name")): [str(p) for p in role.get("parents") or []] for role in roles}
    for name, wanted in parents.items():
        for parent in wanted:
            if parent == name:
                raise FactoryError(
                    f"service template: role '{name}' has itself as a parent: it could never deploy"
                )
            if parent not in parents:
                raise FactoryError(
                    f"service template: role '{name}' has parent '{parent}', which is not a role of this "
                    f"template (roles: {', '.join(names)})"
                )
    done: set[str] = set()
    for start in names:  # depth-first, iterative: a long chain is no recursion
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, index = stack.pop()
            if index == 0:
                if name in done:
                    continue
                if name in path:
                    cycle = " -> ".join(f"'{n}'" for n in [*path[path.index(name) :], name])
                    raise FactoryError(
                        f"service template: roles form a cycle through 'parents' ({cycle}): "
                        "none of them could ever deploy"
                    )
                path.append(name)
            if index < len(parents[name]):
                stack.append((name, index + 1))
                stack.append((parents[name][index], 0))
            else:
                path.pop()
                done.add(name)


def user_input_problem(spec: str, value: Any) -> str | None:
    """Why ``value`` does not fit the ``M|type|description|params|default`` declaration ``spec``, or None."""
    parts = spec.split("|")
    kind = parts[1].strip() if len(parts) > 1 else ""
    params = parts[3].strip() if len(parts) > 3 else ""
    text = str(value).strip() if value is not None else ""
    if text == "" and parts[0].strip() == "O":
        return None
    where = f"({kind}) {text!r}"
    if kind in ("number", "range") and not _INT_EXP.fullmatch(text):
        return f"{where} is not an integer"
    if kind in ("number-float", "range-float") and not _FLOAT_EXP.fullmatch(text):
        return f"{where} is not a number"
    if kind in ("range", "range-float"):
        low, _, high = params.partition("..")
        try:
            bounds = float(low), float(high)
        except ValueError:
            return f"({kind}) has a malformed range {params!r} (min..max)"
        if not bounds[0] <= float(text) <= bounds[1]:
            return f"{where} is not in the range [{params}]"
    if kind == "boolean" and text not in ("YES", "NO"):
        return f"{where} is not a boolean: YES or NO"
    if kind == "list" and text not in [option.strip() for option in params.split(",")]:
        return f"{where} is not one of {params}"
    return None


def _inputs(where: str, inputs: Any) -> dict[str, str]:
    if inputs is None:
        return {}
    if not isinstance(inputs, dict) or not all(isinstance(s, str) for s in inputs.values()):
        raise FactoryError(f"{where}: user_inputs must map names to 'M|type|description|params|default'")
    return inputs


def check_user_input_defaults(template: dict[str, Any]) -> None:
    """A declared default fits its type (it is what a user instantiating with defaults sends)."""
    scopes = [("service template", template.get("user_inputs"))]
    scopes += [(f"service template: role '{r.get('name')}'", r.get("user_inputs")) for r in template["roles"]]
    for where, inputs in scopes:
        for name, spec in _inputs(where, inputs).items():
            parts = spec.split("|")
            if len(parts) > 4 and parts[4].strip() and (problem := user_input_problem(spec, parts[4])):
                raise FactoryError(f"{where}: user input '{name}': default {problem}")


def check_user_input_values(template: dict[str, Any], merge: dict[str, Any]) -> None:
    """The values an instantiation sends fit the types the template declares; every declared input has one."""
    inputs = _inputs("service template", template.get("user_inputs"))
    if not inputs:
        return
    values = merge.get("user_inputs_values")
    if not isinstance(values, dict):
        raise FactoryError(
            f"instantiate: the template declares user inputs ({', '.join(inputs)}) but no user_inputs_values"
        )
    for name, spec in inputs.items():
        if name not in values:
            raise FactoryError(f"instantiate: user input '{name}' has no value")
        if (problem := user_input_problem(spec, values[name])) is not None:
            raise FactoryError(f"instantiate: user input '{name}': {problem}")


def check_policies(template: dict[str, Any]) -> None:
    """Elasticity and scheduled policies as OneFlow validates them (its message, after the factory's prefix):
    expressions that parse, min_vms <= cardinality <= max_vms, a start_time or a valid recurrence."""
    try:
        elasticity.validate_template(template)
    except elasticity.PolicyError as error:
        raise FactoryError(f"service template: {error}") from None


def check_monitoring(template: dict[str, Any], monitoring: str = "monitoring") -> None:
    """A ``monitoring`` role with VMs on the SuperLink's VM template runs that image in monitoring mode
    (``ONEAPP_FL_APPLIANCE_ROLE=monitoring`` in its ``template_contents.CONTEXT``): otherwise each of its
    VMs would start another SuperLink (its own CA, an endpoint published through OneGate)."""
    roles = {str(r.get("name")): r for r in template.get("roles") or [] if isinstance(r, dict)}
    role, superlink = roles.get(monitoring), roles.get("superlink")
    if role is None or superlink is None or not role.get("cardinality"):
        return
    if role.get("template_id") is None or role.get("template_id") != superlink.get("template_id"):
        return
    contents = role.get("template_contents")
    context = contents.get("CONTEXT") if isinstance(contents, dict) else None
    chosen = context.get(APPLIANCE_ROLE) if isinstance(context, dict) else None
    if chosen != "monitoring":
        said = f"{APPLIANCE_ROLE}={chosen!r}" if chosen is not None else f"no {APPLIANCE_ROLE}"
        raise FactoryError(
            f"service template: role '{monitoring}' has {role['cardinality']} VM(s) on the SuperLink's VM "
            f"template {role['template_id']} with {said} in its template_contents CONTEXT: that would "
            f"start another SuperLink; set {APPLIANCE_ROLE}=monitoring there, give the role a VM template "
            "running Prometheus (template_id), or leave its cardinality at 0"
        )


def check_template(template: dict[str, Any]) -> None:
    """Everything above that a service template alone can show; raises FactoryError naming role or input."""
    roles = template.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
        raise FactoryError("service template: roles must be a list of objects")
    check_integers(template)
    check_parents(roles)
    check_policies(template)
    check_monitoring(template)
    check_user_input_defaults(template)
