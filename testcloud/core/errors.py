"""oned's error codes and the way ``Request::failure_message`` words them."""

from __future__ import annotations

SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
RPC_API = 0x1000
INTERNAL = 0x2000
ALLOCATE = 0x4000
LOCKED = 0x8000

# RequestLogger::object_name
VM = "virtual machine"
IMAGE = "image"
TEMPLATE = "virtual machine template"
NET = "virtual network"
DATASTORE = "datastore"
DOCUMENT = "document"
MARKETPLACE = "marketplace"
MARKETPLACEAPP = "marketplaceapp"
USER = "user"
CLUSTER = "cluster"
HOST = "host"


class OneError(Exception):
    """A failed request: oned's code, the reason (``att.resp_msg``), the object it concerns."""

    def __init__(self, code: int, reason: str = "", resp_id: int = -1, obj: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.resp_id = resp_id
        self.obj = obj

    def message(self, method: str, default_obj: str) -> str:
        """The message oned sends back for this failure of ``method``."""
        obname = self.obj or default_obj
        head = f"[{method}] "
        if self.code == AUTHENTICATION:
            return head + "User couldn't be authenticated, aborting call."
        if self.code == AUTHORIZATION:
            if self.reason:
                return head + f"User [0] : {self.reason}."
            return head + f"User [0] not authorized to perform action on {obname}."
        if self.code == NO_EXISTS:
            if self.resp_id != -1:
                return head + f"Error getting {obname} [{self.resp_id}]."
            return head + f"Error getting {obname} Pool."
        if self.code == ALLOCATE:
            text = head + f"Error allocating a new {obname}."
            return text + (f" {self.reason}" if self.reason else "")
        if self.code == LOCKED:
            text = head + f"The resource {obname} is locked."
            return text + (f" [{self.resp_id}]." if self.resp_id != -1 else "")
        return head + self.reason


def no_exists(resp_id: int, obj: str | None = None) -> OneError:
    return OneError(NO_EXISTS, "", resp_id, obj)


def action(reason: str) -> OneError:
    return OneError(ACTION, reason)


def internal(reason: str) -> OneError:
    return OneError(INTERNAL, reason)


def allocate(reason: str, obj: str | None = None) -> OneError:
    return OneError(ALLOCATE, reason, obj=obj)
