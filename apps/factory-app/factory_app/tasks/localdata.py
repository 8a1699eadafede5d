"""A node's own data (node config ``data-path``, filled on the appliance from ONEAPP_FL_DATA), and the
seeded train/test split every use case applies to it. Numpy only.

Formats (the extension decides):
- ``.csv``: a header row, then one sample per row, every value numeric. A column named ``label`` is the
  target (class index 0..C-1, or 0 = normal / 1 = anomaly for the anomaly task); every other column is
  a feature, in the header's order. Feature order and count must be the same on every SuperNode.
- ``.npz`` (numpy.savez): array ``x`` (samples first; images as [n, height, width] or
  [n, height, width, 1]) and, where the task needs one, array ``y`` (integer labels).

The data is read on the SuperNode and never leaves it; only model updates do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABEL_COLUMN = "label"


class DataError(ValueError):
    """The node's data file is missing or not in the documented format."""


def load(path_text: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, labels or None) from ``path_text``; a DataError naming the file and the problem."""
    path = Path(path_text)
    if not path.is_file():
        raise DataError(f"node config data-path: {path} is not a readable file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path)
    if suffix == ".npz":
        return _load_npz(path)
    raise DataError(f"node config data-path: {path} must end in .csv or .npz")


def _load_csv(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            header = [name.strip() for name in handle.readline().strip().split(",")]
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a numeric CSV with a header row: {error}") from None
    if table.size == 0:
        raise DataError(f"{path}: has no data rows")
    if table.shape[1] != len(header):
        raise DataError(f"{path}: the header names {len(header)} columns, the rows have {table.shape[1]}")
    if LABEL_COLUMN in header:
        index = header.index(LABEL_COLUMN)
        return np.delete(table, index, axis=1), table[:, index].astype(np.int64)
    return table, None


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise DataError(f"{path}: has no array 'x' (found: {', '.join(data.files) or 'none'})")
            features = np.asarray(data["x"], dtype=np.float64)
            labels = np.asarray(data["y"]).astype(np.int64) if "y" in data.files else None
    except (OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a numpy .npz archive: {error}") from None
    if labels is not None and len(labels) != len(features):
        raise DataError(f"{path}: x has {len(features)} samples, y has {len(labels)}")
    return features, labels


def split(features: np.ndarray, labels: np.ndarray | None, seed: int, test_fraction: float = 0.2) -> tuple:
    """A seeded shuffle, then (train, test); each is (features, labels or None)."""
    order = np.random.default_rng([seed, 11]).permutation(len(features))
    cut = max(1, round(len(order) * (1.0 - test_fraction)))
    cut = min(cut, len(order) - 1) if len(order) > 1 else cut
    first, second = order[:cut], order[cut:]
    pick = (lambda idx: labels[idx]) if labels is not None else (lambda idx: None)
    return (features[first], pick(first)), (features[second], pick(second))


def partition(count: int, partition_id: int, num_partitions: int, seed: int) -> np.ndarray:
    """The indices of one partition of a demo data set: a seeded permutation, every num_partitions-th."""
    return np.random.default_rng(seed).permutation(count)[partition_id::num_partitions]


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features scaled by the node's own training mean and spread (constant columns stay 0)."""
    mean = train.mean(axis=0)
    spread = train.std(axis=0)
    spread[spread == 0] = 1.0
    return [(array - mean) / spread for array in (train, *others)]


def config_int(config: dict, key: str, default: int) -> int:
    value = int(config.get(key, 0) or 0)
    return value if value > 0 else default
