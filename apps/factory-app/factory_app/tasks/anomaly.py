"""Anomaly detection over numeric features, numpy only (every image, the edge ones included): a small
autoencoder (features -> tanh bottleneck -> features) trained on normal samples by full-batch gradient
descent; a sample's anomaly score is its reconstruction error.

Metrics: ``eval_loss`` is the mean reconstruction error of the normal test samples; ``eval_auc`` is the
ROC AUC of the score separating anomalies from normal samples (0.5 is chance), when the test split holds
both (the demo always does).

Demo data: generated locally from the seed (no download): "sensor" readings that lie near a
3-dimensional subspace of 12 features, plus 10 % anomalies off it in the test split. Real data: node
config ``data-path`` (localdata.py): CSV or NPZ; an optional ``label`` column / ``y`` array marks
anomalies with 1 (training uses the rows labelled 0, or every row when there are no labels). Run-config
``num-features`` must match (0 means the demo's 12).
"""

from __future__ import annotations

import numpy as np

from factory_app.tasks import localdata

DEMO_FEATURES = 12
LATENT = 3
HIDDEN = 4


def _features(config: dict) -> int:
    return localdata.config_int(config, "num-features", DEMO_FEATURES)


def _demo(seed: int, partition_id: int, stream: int, count: int, anomalies: int) -> tuple:
    mixing = np.random.default_rng([seed, 5]).normal(0.0, 1.0, (LATENT, DEMO_FEATURES)) / np.sqrt(LATENT)
    rng = np.random.default_rng([seed, partition_id, stream])
    normal = rng.normal(0.0, 1.0, (count, LATENT)) @ mixing + rng.normal(0.0, 0.1, (count, DEMO_FEATURES))
    odd = rng.normal(0.0, 1.0, (anomalies, DEMO_FEATURES))
    features = np.vstack([normal, odd])
    labels = np.concatenate([np.zeros(count, np.int64), np.ones(anomalies, np.int64)])
    return features, labels


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    seed = int(config["seed"])
    if config.get("data-path"):
        features, labels = localdata.load(str(config["data-path"]))
        features = features.reshape(len(features), -1)
        (train_x, train_y), test = localdata.split(features, labels, seed)
        if train_y is not None:
            train_x = train_x[train_y == 0]
        test_x, test_y = test
    else:
        count = int(config["samples-per-node"])
        train_x, _ = _demo(seed, partition_id, 0, count, 0)
        test_x, test_y = _demo(seed, partition_id, 1, max(count // 4, 40), max(count // 40, 4))
    if train_x.shape[1] != _features(config):
        raise localdata.DataError(
            f"anomaly: the data has {train_x.shape[1]} features, "
            f"run-config num-features says {_features(config)}"
        )
    if len(train_x) == 0:
        raise localdata.DataError("anomaly: no normal (label 0) training rows")
    train_x, test_x = localdata.standardise(train_x, test_x)
    return (train_x, None), (test_x, test_y)


def initial_arrays(config: dict) -> list[np.ndarray]:
    features = _features(config)
    rng = np.random.default_rng([int(config["seed"]), 3])
    scale = 1.0 / np.sqrt(features)
    return [
        rng.normal(0.0, scale, (features, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0.0, scale, (HIDDEN, features)),
        np.zeros(features),
    ]


def _forward(arrays: list[np.ndarray], features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoder, encoder_bias, decoder, decoder_bias = arrays
    hidden = np.tanh(features @ encoder + encoder_bias)
    return hidden, hidden @ decoder + decoder_bias


def scores(arrays: list[np.ndarray], features: np.ndarray) -> np.ndarray:
    """Each sample's mean squared reconstruction error."""
    return np.mean((_forward(arrays, features)[1] - features) ** 2, axis=1)


def auc(score: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) statistic, ties counted half."""
    positive, negative = score[labels == 1], score[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (
        positive[:, None] == negative[None, :]
    ).sum()
    return float(greater / (len(positive) * len(negative)))


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    weights = [np.array(array, dtype=np.float64, copy=True) for array in arrays]
    features = data[0]
    rate = float(config["learning-rate"]) * 4.0
    mu = float(config.get("proximal-mu", 0.0))
    for _ in range(25 * int(config["local-epochs"])):
        decoder = weights[2]
        hidden, output = _forward(weights, features)
        error = 2.0 * (output - features) / features.size
        grad_decoder = hidden.T @ error
        grad_decoder_bias = error.sum(axis=0)
        back = (error @ decoder.T) * (1.0 - hidden**2)
        grad_encoder = features.T @ back
        grad_encoder_bias = back.sum(axis=0)
        grads = [grad_encoder, grad_encoder_bias, grad_decoder, grad_decoder_bias]
        for index, grad in enumerate(grads):
            weights[index] -= rate * (grad + mu * (weights[index] - global_arrays[index]))
    return weights, len(features), {"train_loss": float(np.mean(scores(weights, features)))}


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    features, labels = data
    score = scores(arrays, features)
    normal = score[labels == 0] if labels is not None else score
    metrics = {"eval_loss": float(np.mean(normal))}
    if labels is not None:
        value = auc(score, labels)
        if np.isfinite(value):
            metrics["eval_auc"] = value
    return len(features), metrics
