"""The one error type drivers raise; the core turns it into the VM's failure state and message."""

from __future__ import annotations

from hostkit.host import HostError


class DriverError(HostError):
    """A driver could not do what was asked (launch, execute, reboot, ...); the message says what and why."""
