"""Settings of one test cloud, fixed when it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VERSION = "7.3.80"
DRIVERS = ("auto", "dummy", "container", "qemu")
BRIDGE = "flbr0"
BRIDGE_ADDRESS = "10.231.64.1"
NETWORK_ADDRESS = "10.231.64.0"
NETWORK_MASK = "255.255.255.0"
AR_FIRST_IP = "10.231.64.2"
AR_SIZE = 253


@dataclass(frozen=True)
class Timings:
    """Minimum time a VM, image or app spends in each transient state, so clients really see it.

    The defaults are short; tests that want to watch a state make it longer.
    """

    pending: float = 0.1
    prolog: float = 0.1
    boot: float = 0.1
    shutdown: float = 0.1
    epilog: float = 0.1
    image_lock: float = 0.1
    app_lock: float = 0.1
    tick: float = 0.05
    # seconds between two passes of OneFlow's autoscaler over the RUNNING services (oneflow-server.conf
    # :autoscaler_interval: 90); elasticity policies' own ``period`` still counts in real seconds
    autoscaler: float = 2.0


@dataclass(frozen=True)
class CloudConfig:
    state_dir: Path
    driver: str = "auto"
    onegate_host: str = "127.0.0.1"  # the bridge address when guests are real
    timings: Timings = field(default_factory=Timings)
    flow_cooldown: int = 5  # seconds a scaled role stays in COOLDOWN (oneflow-server.conf default: 300)
    ssh_public_key: str = ""
    datastore_limit_mb: int | None = None  # LIMIT_MB of the image datastore (oned: datastore template)
