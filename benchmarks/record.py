"""Where a benchmark keeps what it measured: one JSON file a run under ``results/bench/``.

from benchmarks.record import save_record
path = save_record("bench-images", {"ratios": ...})   # results/bench/bench-images-<UTC time>.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hostkit.fileio import write_atomic
from hostkit.paths import RESULTS_DIR


def save_record(name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``results/bench/<name>-<UTC time>.json`` (atomically) and return the path."""
    path = RESULTS_DIR / "bench" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
