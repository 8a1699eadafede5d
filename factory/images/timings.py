"""Where the image stage's time went: per image and per layer, built or reused, in seconds.

The local builder records every cache entry it makes or finds (base, layers, images) in a ``BuildTimings``
(``SESSION``, the process's record, unless a caller passes its own). ``write_section`` merges the record
into a ``timings.json`` under the section ``images``, beside the other stages' sections; ``breakdown`` is the
text printed at the end of the stage.

    {"images": {"total_seconds": 212.4, "built_seconds": 208.1, "reused_seconds": 0.1,
                "entries": [{"kind": "layer", "name": "system", "variant": "...", "key": "...",
                             "outcome": "built", "seconds": 81.2}, ...]}}
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hostkit.errors import FactoryError
from hostkit.fileio import write_atomic

SECTION = "images"


class Outcome(enum.StrEnum):
    BUILT = "built"
    REUSED = "reused"


class EntryKind(enum.StrEnum):
    BASE = "base"
    LAYER = "layer"
    IMAGE = "image"


@dataclass(frozen=True)
class Timing:
    kind: EntryKind
    name: str  # base: the OS; layer: system/runtime; image: the variant
    variant: str  # the variant whose build needed it ("" for the base)
    key: str
    outcome: Outcome
    seconds: float


@dataclass
class BuildTimings:
    entries: list[Timing] = field(default_factory=list)

    def record(
        self, kind: EntryKind, name: str, variant: str, key: str, reused: bool, seconds: float
    ) -> Timing:
        timing = Timing(kind, name, variant, key, Outcome.REUSED if reused else Outcome.BUILT, seconds)
        self.entries.append(timing)
        return timing

    def seen(self, kind: EntryKind, key: str, outcome: Outcome | None = None) -> bool:
        return any(
            entry.kind == kind and entry.key == key and outcome in (None, entry.outcome)
            for entry in self.entries
        )

    def seconds(self, outcome: Outcome | None = None) -> float:
        return sum(entry.seconds for entry in self.entries if outcome in (None, entry.outcome))

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_seconds": round(self.seconds(), 3),
            "built_seconds": round(self.seconds(Outcome.BUILT), 3),
            "reused_seconds": round(self.seconds(Outcome.REUSED), 3),
            "entries": [asdict(entry) | {"seconds": round(entry.seconds, 3)} for entry in self.entries],
        }

    def breakdown(self) -> str:
        """One line per entry, then the totals (the text the image stage prints at its end)."""
        lines = ["image stage timings (seconds):"]
        for entry in self.entries:
            what = entry.name if entry.kind != EntryKind.LAYER else f"{entry.name} layer for {entry.variant}"
            lines.append(
                f"  {entry.seconds:8.1f}  {entry.outcome:6}  {entry.kind:5}  {what}  [{entry.key[:16]}]"
            )
        built = sum(1 for entry in self.entries if entry.outcome == Outcome.BUILT)
        lines.append(
            f"  {self.seconds():8.1f}  total: {built} built ({self.seconds(Outcome.BUILT):.1f} s), "
            f"{len(self.entries) - built} reused ({self.seconds(Outcome.REUSED):.1f} s)"
        )
        return "\n".join(lines)


SESSION = BuildTimings()


def write_section(path: Path, timings: BuildTimings, section: str = SECTION) -> None:
    """Put ``timings`` into the JSON object at ``path`` under ``section``, keeping the other sections."""
    document: dict[str, Any] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise FactoryError(f"{path}: not a JSON timings record ({error}); move it away") from None
        if not isinstance(document, dict):
            raise FactoryError(f"{path}: not a JSON object; move it away")
    document[section] = timings.as_dict()
    write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
