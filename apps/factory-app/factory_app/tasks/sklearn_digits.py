"""Multinomial logistic regression on scikit-learn's bundled digits data set (load_digits: no download).

Partitions take disjoint slices of the shuffled data set; the global model is (coef, intercept).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

CLASSES = 10
FEATURES = 64


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    features, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(int(config["seed"])).permutation(len(labels))
    mine = order[partition_id::num_partitions]
    features = features[mine] / 16.0
    labels = labels[mine]
    cut = int(len(labels) * 0.8)
    return (features[:cut], labels[:cut]), (features[cut:], labels[cut:])


def initial_arrays(config: dict) -> list[np.ndarray]:
    return [np.zeros((CLASSES, FEATURES)), np.zeros(CLASSES)]


def _model(arrays: list[np.ndarray], local_epochs: int) -> LogisticRegression:
    model = LogisticRegression(max_iter=max(local_epochs, 1), warm_start=True)
    model.classes_ = np.arange(CLASSES)
    model.coef_ = np.array(arrays[0], dtype=np.float64)
    model.intercept_ = np.array(arrays[1], dtype=np.float64)
    return model


def _loss(model: LogisticRegression, data: tuple) -> tuple[float, float]:
    features, labels = data
    probabilities = model.predict_proba(features)
    return (
        float(log_loss(labels, probabilities, labels=np.arange(CLASSES))),
        float(accuracy_score(labels, model.predict(features))),
    )


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    model = _model(arrays, 5 * int(config["local-epochs"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(*data)
    loss, accuracy = _loss(model, data)
    return [model.coef_, model.intercept_], len(data[1]), {"train_loss": loss, "train_accuracy": accuracy}


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    loss, accuracy = _loss(_model(arrays, 1), data)
    return len(data[1]), {"eval_loss": loss, "eval_accuracy": accuracy}
