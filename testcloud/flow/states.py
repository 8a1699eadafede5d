"""OneFlow's service and role states, numbers and names as upstream defines them (``Service::STATE`` and
``Role::STATE`` in ``one/src/oca/ruby/opennebula/oneflow_client.rb``; the numbers are what a service
document's JSON body holds in ``state``)."""

from __future__ import annotations

from enum import IntEnum


class ServiceState(IntEnum):
    PENDING = 0
    DEPLOYING = 1
    RUNNING = 2
    UNDEPLOYING = 3
    WARNING = 4
    DONE = 5
    FAILED_UNDEPLOYING = 6
    FAILED_DEPLOYING = 7
    SCALING = 8
    FAILED_SCALING = 9
    COOLDOWN = 10
    DEPLOYING_NETS = 11
    UNDEPLOYING_NETS = 12
    FAILED_DEPLOYING_NETS = 13
    FAILED_UNDEPLOYING_NETS = 14
    HOLD = 15


class RoleState(IntEnum):
    PENDING = 0
    DEPLOYING = 1
    RUNNING = 2
    UNDEPLOYING = 3
    WARNING = 4
    DONE = 5
    FAILED_UNDEPLOYING = 6
    FAILED_DEPLOYING = 7
    SCALING = 8
    FAILED_SCALING = 9
    COOLDOWN = 10
    HOLD = 11


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
