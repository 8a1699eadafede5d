"""Tabular classification with scikit-learn: a linear classifier (SGDClassifier, log-loss) over numeric
features. The global model is (coef, intercept); classes are fixed up front (run-config ``num-classes``),
so a node whose data lacks a class still trains and averages with the others.

Demo data: scikit-learn's bundled breast cancer data set (load_breast_cancer: 569 samples, 30 features,
2 classes; ships with scikit-learn, no download), partitioned across nodes. Real data: node config
``data-path`` (localdata.py): CSV with a ``label`` column, or NPZ with ``x`` and ``y``; run-config
``num-features`` and ``num-classes`` must then describe it (0 means the demo's 30 and 2). Each node
standardises its features with its own training mean and spread.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier

from factory_app.tasks import linearmodel, localdata

DEMO_FEATURES = 30
DEMO_CLASSES = 2


def _shape(config: dict) -> tuple[int, int]:
    return (
        localdata.config_int(config, "num-features", DEMO_FEATURES),
        localdata.config_int(config, "num-classes", DEMO_CLASSES),
    )


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    seed = int(config["seed"])
    features_wanted, classes = _shape(config)
    if config.get("data-path"):
        features, labels = localdata.load(str(config["data-path"]))
        if labels is None:
            raise localdata.DataError(f"{config['data-path']}: the tabular task needs labels (y / label)")
    else:
        features, labels = load_breast_cancer(return_X_y=True)
        mine = localdata.partition(len(labels), partition_id, num_partitions, seed)
        features, labels = features[mine], labels[mine]
    features = features.reshape(len(features), -1)
    if features.shape[1] != features_wanted:
        raise localdata.DataError(
            f"tabular: the data has {features.shape[1]} features, "
            f"run-config num-features says {features_wanted}"
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise localdata.DataError(f"tabular: labels must be within 0..{classes - 1} (run-config num-classes)")
    (train_x, train_y), (test_x, test_y) = localdata.split(features, labels, seed)
    train_x, test_x = localdata.standardise(train_x, test_x)
    return (train_x, train_y), (test_x, test_y)


def initial_arrays(config: dict) -> list[np.ndarray]:
    features, classes = _shape(config)
    rows = 1 if classes == 2 else classes
    return [np.zeros((rows, features)), np.zeros(rows)]


def _model(arrays: list[np.ndarray], config: dict) -> SGDClassifier:
    model = SGDClassifier(
        loss="log_loss",
        learning_rate="constant",
        eta0=float(config["learning-rate"]) * 0.2,
        alpha=1e-4,
        random_state=int(config["seed"]),
    )
    return linearmodel.with_weights(model, arrays, _shape(config)[1])


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    model = _model(arrays, config)
    classes = _shape(config)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(int(config["local-epochs"])):
            model.partial_fit(*data, classes=np.arange(classes))
    return linearmodel.trained(model, data, classes)


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    return linearmodel.evaluated(_model(arrays, config), data, _shape(config)[1])
