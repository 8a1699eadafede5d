"""Multinomial logistic regression on scikit-learn's bundled digits data set (load_digits: no download).

Partitions take disjoint slices of the shuffled data set; the global model is (coef, intercept).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from factory_app.tasks import linearmodel

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
    return linearmodel.with_weights(model, arrays, CLASSES)


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    model = _model(arrays, 5 * int(config["local-epochs"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(*data)
    return linearmodel.trained(model, data, CLASSES)


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    return linearmodel.evaluated(_model(arrays, 1), data, CLASSES)
