"""Checkpoints of a job's global model: one per finished round, the newest ``keep`` kept, atomic writes.

Layout under the checkpoint directory (run-config ``checkpoint-dir``)::

    <job-id>/round-00002.npz    the global model arrays after round 2 (keys a0, a1, ... in model order)
    <job-id>/round-00002.json   {"job": ..., "round": 2, "rounds": 5, "metrics": {...}, "saved": epoch}
    <job-id>/final.npz          the model after the last round (with final.json)

A checkpoint counts only when both its files exist: the .npz is renamed into place before its .json,
so a job killed mid-write leaves at most an orphan .npz, never a .json without its arrays.
Pure numpy: no Flower import.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROUND_FILE = re.compile(r"^round-(\d{5,})\.json$")


@dataclass(frozen=True)
class Checkpoint:
    job: str
    round: int
    arrays: list[np.ndarray]
    meta: dict
    path: Path


def _atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _save(directory: Path, stem: str, arrays: list[np.ndarray], meta: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / f"{stem}.npz"
    _atomic_write(npz, lambda handle: np.savez(handle, **{f"a{i}": a for i, a in enumerate(arrays)}))
    _atomic_write(
        directory / f"{stem}.json", lambda handle: handle.write(json.dumps(meta, sort_keys=True).encode())
    )
    return npz


class CheckpointStore:
    """The checkpoints of one job (``root/<job>``)."""

    def __init__(self, root: Path, job: str, keep: int = 3) -> None:
        self.directory = root / job
        self.job = job
        self.keep = max(1, keep)

    def rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = ROUND_FILE.match(entry.name)
            if match and entry.with_suffix(".npz").is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def save(self, server_round: int, rounds: int, arrays: list[np.ndarray], metrics: dict) -> Path:
        meta = {"job": self.job, "round": server_round, "rounds": rounds, "metrics": metrics}
        meta["saved"] = time.time()
        path = _save(self.directory, f"round-{server_round:05d}", arrays, meta)
        for old in self.rounds()[: -self.keep]:
            for suffix in (".json", ".npz"):
                (self.directory / f"round-{old:05d}{suffix}").unlink(missing_ok=True)
        return path

    def save_final(self, rounds: int, arrays: list[np.ndarray], metrics: dict) -> Path:
        meta = {"job": self.job, "round": rounds, "rounds": rounds, "metrics": metrics, "saved": time.time()}
        return _save(self.directory, "final", arrays, meta)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint (a damaged newest one is skipped for the one before)."""
        for number in reversed(self.rounds()):
            stem = self.directory / f"round-{number:05d}"
            try:
                meta = json.loads(stem.with_suffix(".json").read_text())
                with np.load(stem.with_suffix(".npz")) as data:
                    arrays = [data[f"a{i}"] for i in range(len(data.files))]
            except (OSError, ValueError, KeyError):
                continue
            if meta.get("job") != self.job or int(meta.get("round", -1)) != number:
                continue
            return Checkpoint(self.job, number, arrays, meta, stem.with_suffix(".npz"))
        return None
