"""A pair, from the matrix to its record: the two sides (Side), what to test (PairSpec), what happened
(PairResult, the JSON record under results/<run>/, schema 1).

    spec = PairSpec("pair-...", superlink=Side("sl", "1.42.0"), supernode=Side("sn", "1.42.0", count=2))
    result = PairResult.begin(spec, run="20260101-000000", target="bare", security="tls-auth")
    result.status = Status.PASSED

A Side is a matrix variant reduced to what a record keeps (factory/harness/campaign.py `side_of` makes
it); the same Side object travels from the spec into the result, with its image's record added when the
pair runs in a cloud. Records written by older runs load unchanged (``PairResult.from_dict``): the field
names are the JSON keys.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from hostkit.errors import ConfigError

SCHEMA_VERSION = 1
# The axes a pair is filed under. They are its SuperNodes': a SuperLink is always CPU, standard, x86_64.
PAIR_AXES = ("os", "accel", "profile", "framework", "arch")


class Status(StrEnum):
    """A pair's outcome, as its record writes it."""

    PASSED = "passed"
    PASSED_WITH_WARNING = "passed_with_warning"
    FAILED = "failed"


PASSED, PASSED_WITH_WARNING, FAILED = Status.PASSED, Status.PASSED_WITH_WARNING, Status.FAILED
STATUSES = tuple(Status)


@dataclass
class Side:
    """One side of a pair: the SuperLink image, or the SuperNode image (with how many were started)."""

    variant: str
    flower: str
    os: str = ""
    accel: str = ""
    profile: str = ""
    framework: str = ""
    arch: str = ""
    count: int = 1
    image: dict[str, Any] = field(default_factory=dict)  # path, format, sha256, md5, size; from the manifest


@dataclass
class PairResult:
    pair: str
    run: str
    target: str  # "testcloud", "opennebula" or "bare"
    security: str
    superlink: Side
    supernodes: Side
    framework_task: str = ""  # the task of the SuperNode image's framework (pairtest.framework_task)
    status: Status = Status.FAILED
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    federations: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    schema: int = SCHEMA_VERSION

    @classmethod
    def begin(cls, spec: PairSpec, run: str, target: str, security: str) -> PairResult:
        """The record a pair test fills in, its sides those of ``spec``."""
        return cls(spec.name, run, target, security, superlink=spec.superlink, supernodes=spec.supernode)

    @property
    def passed(self) -> bool:
        return self.status in (PASSED, PASSED_WITH_WARNING)

    @property
    def variants(self) -> tuple[str, str]:
        """The SuperLink's and the SuperNodes' variant names."""
        return self.superlink.variant, self.supernodes.variant

    @property
    def cross_version(self) -> bool:
        return self.superlink.flower != self.supernodes.flower

    @property
    def axes(self) -> dict[str, str]:
        """os, accel, profile, framework, arch of the pair: its SuperNodes' values."""
        return {axis: getattr(self.supernodes, axis) for axis in PAIR_AXES}

    def federation(self, task: str) -> dict[str, Any] | None:
        """The recorded federation run of ``task``, if it ran."""
        return next((item for item in self.federations if item.get("task") == task), None)

    def framework_federation(self) -> dict[str, Any] | None:
        """The run of the pair's framework task (what its SuperNode image is for; on edge images the numpy
        task). Records written before the field existed name it through the SuperNodes' framework."""
        return self.federation(self.framework_task or self.supernodes.framework)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cross_version"] = self.cross_version
        data["axes"] = self.axes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "result") -> PairResult:
        try:
            if int(data.get("schema", 0)) != SCHEMA_VERSION:
                raise ConfigError(source, "schema", f"unsupported result schema {data.get('schema')!r}")
            values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
            values["superlink"] = Side(**data["superlink"])
            values["supernodes"] = Side(**data["supernodes"])
            result = cls(**values)
        except (KeyError, TypeError) as error:
            raise ConfigError(source, "", f"not a pair result record: {error}") from None
        try:
            result.status = Status(result.status)
        except ValueError:
            raise ConfigError(
                source, "status", f"unknown status {result.status!r} (known: {', '.join(STATUSES)})"
            ) from None
        return result


@dataclass(frozen=True)
class PairSpec:
    """A pair to test: the SuperLink side, the SuperNode side (same or another Flower version)."""

    name: str
    superlink: Side
    supernode: Side
