"""Tiny linear regression trained with full-batch gradient descent: fast, deterministic, loss goes down.

Evaluation reports the mean squared error (``eval_loss``) and the coefficient of determination
(``eval_r2`` = 1 - MSE / variance of the node's test targets: 1 is a perfect fit, 0 is no better than
predicting the mean), the metric the harness holds to a floor (apps/task-checks.toml).

Every partition draws its own features from a generator seeded by (seed, partition id), their mean shifted
by partition within [-0.25, 0.25] (mildly non-IID, and bounded: the step size stays stable for any number of
partitions); the true weights are shared, so federated averaging converges.
"""

from __future__ import annotations

import numpy as np

FEATURES = 10


def _true_model(seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, FEATURES), float(rng.normal(0.0, 1.0))


def _draw(
    seed: int, partition_id: int, num_partitions: int, stream: int, count: int
) -> tuple[np.ndarray, np.ndarray]:
    weights, bias = _true_model(seed)
    rng = np.random.default_rng([seed, partition_id, stream])
    shift = 0.5 * partition_id / max(num_partitions - 1, 1) - 0.25
    features = rng.normal(shift, 1.0, (count, FEATURES))
    targets = features @ weights + bias + rng.normal(0.0, 0.1, count)
    return features, targets


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    count = int(config["samples-per-node"])
    seed = int(config["seed"])
    train = _draw(seed, partition_id, num_partitions, 0, count)
    return train, _draw(seed, partition_id, num_partitions, 1, max(count // 4, 16))


def initial_arrays(config: dict) -> list[np.ndarray]:
    return [np.zeros(FEATURES), np.zeros(1)]


def _mse(weights: np.ndarray, bias: np.ndarray, data: tuple) -> float:
    features, targets = data
    residual = features @ weights + bias[0] - targets
    return float(np.mean(residual**2))


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    weights, bias = (array.astype(np.float64, copy=True) for array in arrays)
    features, targets = data
    learning_rate = float(config["learning-rate"])
    mu = float(config.get("proximal-mu", 0.0))
    steps = 10 * int(config["local-epochs"])
    for _ in range(steps):
        residual = features @ weights + bias[0] - targets
        grad_weights = 2.0 * features.T @ residual / len(targets) + mu * (weights - global_arrays[0])
        grad_bias = 2.0 * np.mean(residual) + mu * (bias[0] - global_arrays[1][0])
        weights -= learning_rate * grad_weights
        bias[0] -= learning_rate * grad_bias
    return [weights, bias], len(targets), {"train_loss": _mse(weights, bias, data)}


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    weights, bias = arrays
    mse = _mse(weights, bias, data)
    variance = float(np.var(data[1]))
    r2 = 1.0 - mse / variance if variance > 0.0 else 0.0
    return len(data[1]), {"eval_loss": mse, "eval_r2": r2}
