"""What the scikit-learn linear tasks (``sklearn_digits``, ``tabular``) share: the global model is the
estimator's (coef, intercept), and a round reports its log loss and accuracy."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from sklearn.metrics import accuracy_score, log_loss

Model = TypeVar("Model")  # a scikit-learn linear classifier: LogisticRegression, SGDClassifier


def with_weights(model: Model, arrays: list[np.ndarray], classes: int) -> Model:
    """``model`` holding the global (coef, intercept) ``arrays`` over ``classes`` classes."""
    model.classes_ = np.arange(classes)
    model.coef_ = np.array(arrays[0], dtype=np.float64)
    model.intercept_ = np.array(arrays[1], dtype=np.float64)
    return model


def _measure(model: Any, data: tuple, classes: int) -> tuple[float, float]:
    features, labels = data
    probabilities = model.predict_proba(features)
    return (
        float(log_loss(labels, probabilities, labels=np.arange(classes))),
        float(accuracy_score(labels, model.predict(features))),
    )


def trained(model: Any, data: tuple, classes: int) -> tuple:
    """A task's ``train`` result for a fitted ``model``: (arrays, examples, metrics)."""
    loss, accuracy = _measure(model, data, classes)
    return [model.coef_, model.intercept_], len(data[1]), {"train_loss": loss, "train_accuracy": accuracy}


def evaluated(model: Any, data: tuple, classes: int) -> tuple:
    """A task's ``evaluate`` result: (examples, metrics)."""
    loss, accuracy = _measure(model, data, classes)
    return len(data[1]), {"eval_loss": loss, "eval_accuracy": accuracy}
