"""Persistence: every pool object is one JSON file, written atomically whenever it changes.

``<state_dir>/db/<kind>/<id>.json`` plus ``<state_dir>/db/counters.json`` (the next id of each pool: oned
never reuses an id). A crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hostkit.fileio import write_atomic
from testcloud.core.objects import POOL_CLASSES, PoolObject


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "db"
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.counters_path = self.root / "counters.json"

    def load_counters(self) -> dict[str, int]:
        if not self.counters_path.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self.counters_path.read_text()).items()}

    def save_counters(self, counters: dict[str, int]) -> None:
        write_atomic(self.counters_path, json.dumps(counters, sort_keys=True).encode(), 0o600)

    def load_all(self) -> dict[str, dict[int, PoolObject]]:
        pools: dict[str, dict[int, PoolObject]] = {kind: {} for kind in POOL_CLASSES}
        for kind, cls in POOL_CLASSES.items():
            directory = self.root / kind
            if not directory.is_dir():
                continue
            for path in directory.glob("*.json"):
                data: dict[str, Any] = json.loads(path.read_text())
                obj = cls.from_dict(data)
                pools[kind][obj.id] = obj
        return pools

    def save(self, obj: PoolObject) -> None:
        path = self.root / obj.KIND / f"{obj.id}.json"
        write_atomic(path, json.dumps(obj.to_dict(), sort_keys=True).encode(), 0o600)

    def drop(self, obj: PoolObject) -> None:
        (self.root / obj.KIND / f"{obj.id}.json").unlink(missing_ok=True)
