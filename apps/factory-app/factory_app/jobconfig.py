"""The run-config of a job, checked before anything trains: one clear error per wrong key, never a traceback.

Pure Python (no Flower import), so the checks are unit-testable anywhere and the same rules can be
mirrored by the in-guest job runner (context/appliance/bin/flower-job).

Privacy keys (what Flower 1.41/1.42 offers for the Message API, see docs/train-on-deploy.md):
- ``dp``: off, server-fixed, server-adaptive, client-fixed, client-adaptive. They map onto the strategy
  wrappers of flwr/serverapp/strategy/dp_fixed_clipping.py and dp_adaptive_clipping.py; the client-side
  modes need the clipping mods of flwr/clientapp/mod/centraldp_mods.py, which this app's ClientApp applies
  when the run-config says so (the pair agrees by construction: both read the same run-config).
- ``dp-noise-multiplier`` (>= 0), ``dp-clipping-norm`` (> 0; the initial norm of the adaptive modes),
  ``dp-sampled-clients`` (1..min-nodes; 0 means min-nodes).
- ``secagg``: off only. SecAgg+ exists in Flower 1.42 as flwr/server/workflow/secure_aggregation/
  secaggplus_workflow.py, which requires a LegacyContext (the legacy Strategy/ServerConfig ServerApp),
  not the grid-based ServerApp with flwr.serverapp strategies this app uses.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from enum import Enum

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", "fedmedian", "krum", "multikrum", "fedtrimmedavg")


class DPMode(Enum):
    OFF = "off"
    SERVER_FIXED = "server-fixed"
    SERVER_ADAPTIVE = "server-adaptive"
    CLIENT_FIXED = "client-fixed"
    CLIENT_ADAPTIVE = "client-adaptive"

    @property
    def client_side(self) -> bool:
        return self in (DPMode.CLIENT_FIXED, DPMode.CLIENT_ADAPTIVE)

    @property
    def adaptive(self) -> bool:
        return self in (DPMode.SERVER_ADAPTIVE, DPMode.CLIENT_ADAPTIVE)


SECAGG_UNSUPPORTED = (
    "secaggplus is not available to this app: Flower's SecAgg+ (flwr/server/workflow/secure_aggregation/"
    "secaggplus_workflow.py, SecAggPlusWorkflow.__call__) requires a LegacyContext, i.e. the legacy "
    "Strategy ServerApp, and the Message API strategies (flwr/serverapp/strategy) have no SecAgg+ path"
)

# Keys that operate a job but do not change what it computes: a resumed job may differ in these.
OPERATIONAL_KEYS = frozenset(
    {"checkpoint-dir", "checkpoint-keep", "round-timeout", "num-server-rounds", "min-nodes", "job-id"}
)


class JobConfigError(ValueError):
    """A run-config value that is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class DPSettings:
    mode: DPMode
    noise_multiplier: float
    clipping_norm: float
    sampled_clients: int

    def to_dict(self) -> dict:
        return {
            "mode": self.mode.value,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "sampled_clients": self.sampled_clients,
        }


@dataclass(frozen=True)
class JobSettings:
    strategy: str
    rounds: int
    min_nodes: int
    round_timeout: float
    dp: DPSettings
    checkpoint_dir: str
    checkpoint_keep: int
    job_id: str


def _int(config: dict, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or value is None:
        raise JobConfigError(f"run-config {key}: must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise JobConfigError(f"run-config {key}: must be an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise JobConfigError(f"run-config {key}: must be an integer, got {value!r}")
    return value


def _float(config: dict, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool):
        raise JobConfigError(f"run-config {key}: must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JobConfigError(f"run-config {key}: must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise JobConfigError(f"run-config {key}: must be a finite number, got {value!r}")
    return number


def job_identity(config: dict) -> str:
    """What makes two runs the same job: every key that changes what is computed (not the number of
    rounds, so that a job can also be extended). An explicit ``job-id`` wins."""
    explicit = str(config.get("job-id", "") or "").strip()
    if explicit:
        return explicit
    relevant = {key: config[key] for key in sorted(config) if key not in OPERATIONAL_KEYS}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()
    return f"job-{digest[:16]}"


def check_job_id(job_id: str) -> str:
    if not job_id or len(job_id) > 64 or not all(ch.isalnum() or ch in "-_." for ch in job_id):
        raise JobConfigError(
            f"run-config job-id: {job_id[:70]!r} must be 1-64 characters of letters, digits, '-', '_', '.'"
        )
    if job_id.startswith("."):
        raise JobConfigError(f"run-config job-id: {job_id!r} must not start with '.'")
    return job_id


def parse_dp(config: dict, min_nodes: int) -> DPSettings:
    raw = str(config.get("dp", "off") or "off").strip().lower()
    try:
        mode = DPMode(raw)
    except ValueError:
        known = ", ".join(mode.value for mode in DPMode)
        raise JobConfigError(f"run-config dp: unknown mode {raw!r} (known: {known})") from None
    noise = _float(config, "dp-noise-multiplier", 1.0)
    clip = _float(config, "dp-clipping-norm", 10.0)
    sampled = _int(config, "dp-sampled-clients", 0) or min_nodes
    if mode is not DPMode.OFF:
        if noise < 0.0:
            raise JobConfigError(f"run-config dp-noise-multiplier: must be >= 0, got {noise}")
        if clip <= 0.0:
            raise JobConfigError(f"run-config dp-clipping-norm: must be > 0, got {clip}")
        if not 1 <= sampled <= min_nodes:
            raise JobConfigError(
                f"run-config dp-sampled-clients: must be within 1..{min_nodes} (min-nodes), got {sampled}"
            )
        # Flower's adaptive clipping noises the clipped count with stddev sampled/20 and needs the noise
        # multiplier below twice that (flwr/supercore/differential_privacy.py,
        # compute_adaptive_noise_params): checked here, not when the first round starts.
        if mode.adaptive and noise > 0.0 and noise >= sampled / 10.0:
            raise JobConfigError(
                f"run-config dp-noise-multiplier: with adaptive clipping it must be below "
                f"dp-sampled-clients/10 = {sampled / 10.0:g} (Flower's clipped-count noise), got {noise}"
            )
    return DPSettings(mode, noise, clip, sampled)


def parse(config: dict) -> JobSettings:
    """Every job key checked; raises JobConfigError naming the first wrong one."""
    strategy = str(config.get("strategy", "fedavg")).strip().lower()
    if strategy not in STRATEGY_NAMES:
        raise JobConfigError(
            f"run-config strategy: unknown strategy {strategy!r} (known: {', '.join(STRATEGY_NAMES)})"
        )
    rounds = _int(config, "num-server-rounds")
    if not 1 <= rounds <= 100000:
        raise JobConfigError(f"run-config num-server-rounds: must be within 1..100000, got {rounds}")
    min_nodes = _int(config, "min-nodes", 2)
    if not 1 <= min_nodes <= 10000:
        raise JobConfigError(f"run-config min-nodes: must be within 1..10000, got {min_nodes}")
    timeout = _float(config, "round-timeout", 600.0)
    if timeout <= 0:
        raise JobConfigError(f"run-config round-timeout: must be > 0 seconds, got {timeout}")
    secagg = str(config.get("secagg", "off") or "off").strip().lower()
    if secagg == "secaggplus":
        raise JobConfigError(f"run-config secagg: {SECAGG_UNSUPPORTED}")
    if secagg != "off":
        raise JobConfigError(f"run-config secagg: unknown mode {secagg!r} (known: off)")
    keep = _int(config, "checkpoint-keep", 3)
    if keep < 1:
        raise JobConfigError(f"run-config checkpoint-keep: must be >= 1, got {keep}")
    return JobSettings(
        strategy=strategy,
        rounds=rounds,
        min_nodes=min_nodes,
        round_timeout=timeout,
        dp=parse_dp(config, min_nodes),
        checkpoint_dir=str(config.get("checkpoint-dir", "") or "").strip(),
        checkpoint_keep=keep,
        job_id=check_job_id(job_identity(config)),
    )
