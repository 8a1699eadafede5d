"""OneFlow's service and role states, numbers and names as upstream defines them (``Service::STATE`` and
``Role::STATE`` in ``one/src/oca/ruby/opennebula/oneflow_client.rb``; the numbers are what a service
document's JSON body holds in ``state``)."""

from __future__ import annotations

from enum import IntEnum

# A service and a role share their first eleven states, name and number: the engine moves a role into its
# service's FAILED_* state by name.
_SHARED = (
    "PENDING",
    "DEPLOYING",
    "RUNNING",
    "UNDEPLOYING",
    "WARNING",
    "DONE",
    "FAILED_UNDEPLOYING",
    "FAILED_DEPLOYING",
    "SCALING",
    "FAILED_SCALING",
    "COOLDOWN",
)
ServiceState = IntEnum(
    "ServiceState",
    [
        *_SHARED,
        "DEPLOYING_NETS",
        "UNDEPLOYING_NETS",
        "FAILED_DEPLOYING_NETS",
        "FAILED_UNDEPLOYING_NETS",
        "HOLD",
    ],
    module=__name__,
    start=0,
)
RoleState = IntEnum("RoleState", [*_SHARED, "HOLD"], module=__name__, start=0)


TRANSIENT = frozenset(
    {
        ServiceState.DEPLOYING,
        ServiceState.UNDEPLOYING,
        ServiceState.SCALING,
        ServiceState.COOLDOWN,
        ServiceState.DEPLOYING_NETS,
        ServiceState.UNDEPLOYING_NETS,
    }
)
FAILED = frozenset(s for s in ServiceState if s.name.startswith("FAILED_"))
