"""Image classification for edge nodes, numpy only: softmax regression over the pixels, full-batch
gradient descent. Small and fast enough for any SuperNode, the numpy-only edge images included.

Demo data: the synthetic 16x16 class patterns of synthetic.py (generated locally, no download). Real
data: node config ``data-path`` (localdata.py): NPZ with ``x`` [n, height, width] (or [n, h, w, 1], or
already flattened [n, h*w]) and ``y`` (class indices), or a CSV of flattened pixels with a ``label``
column; run-config ``num-features`` (pixels per image, 0 means the demo's 256) and ``num-classes``
(0 means 10) must describe it. Pixels are standardised per node.
"""

from __future__ import annotations

import numpy as np

from factory_app.tasks import localdata, synthetic

DEMO_FEATURES = synthetic.SIDE * synthetic.SIDE


def _shape(config: dict) -> tuple[int, int]:
    return (
        localdata.config_int(config, "num-features", DEMO_FEATURES),
        localdata.config_int(config, "num-classes", synthetic.CLASSES),
    )


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    features_wanted, classes = _shape(config)
    if config.get("data-path"):
        images, labels = localdata.load(str(config["data-path"]))
        if labels is None:
            raise localdata.DataError(f"{config['data-path']}: the edge-image task needs labels (y / label)")
        train, test = localdata.split(images, labels, int(config["seed"]))
    else:
        train, test = synthetic.load_data(partition_id, num_partitions, config)
    flat = [(x.reshape(len(x), -1).astype(np.float64), y) for x, y in (train, test)]
    if flat[0][0].shape[1] != features_wanted:
        raise localdata.DataError(
            f"edge-image: images have {flat[0][0].shape[1]} pixels, "
            f"run-config num-features says {features_wanted}"
        )
    if min(y.min() for _, y in flat) < 0 or max(y.max() for _, y in flat) >= classes:
        raise localdata.DataError(
            f"edge-image: labels must be within 0..{classes - 1} (run-config num-classes)"
        )
    train_x, test_x = localdata.standardise(flat[0][0], flat[1][0])
    return (train_x, flat[0][1]), (test_x, flat[1][1])


def initial_arrays(config: dict) -> list[np.ndarray]:
    features, classes = _shape(config)
    return [np.zeros((features, classes)), np.zeros(classes)]


def _probabilities(arrays: list[np.ndarray], features: np.ndarray) -> np.ndarray:
    logits = features @ arrays[0] + arrays[1]
    logits -= logits.max(axis=1, keepdims=True)
    exponent = np.exp(logits)
    return exponent / exponent.sum(axis=1, keepdims=True)


def _measure(arrays: list[np.ndarray], data: tuple) -> tuple[float, float]:
    features, labels = data
    probabilities = _probabilities(arrays, features)
    loss = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))
    return loss, float(np.mean(probabilities.argmax(axis=1) == labels))


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    weights, bias = (np.array(array, dtype=np.float64, copy=True) for array in arrays)
    features, labels = data
    onehot = np.eye(weights.shape[1])[labels]
    rate = float(config["learning-rate"])
    mu = float(config.get("proximal-mu", 0.0))
    for _ in range(20 * int(config["local-epochs"])):
        error = (_probabilities([weights, bias], features) - onehot) / len(labels)
        weights -= rate * (features.T @ error + mu * (weights - global_arrays[0]))
        bias -= rate * (error.sum(axis=0) + mu * (bias - global_arrays[1]))
    loss, accuracy = _measure([weights, bias], data)
    return [weights, bias], len(labels), {"train_loss": loss, "train_accuracy": accuracy}


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    loss, accuracy = _measure(arrays, data)
    return len(data[1]), {"eval_loss": loss, "eval_accuracy": accuracy}
