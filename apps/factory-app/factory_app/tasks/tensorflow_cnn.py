"""A small Keras CNN on the synthetic 16x16 patterns (tasks/synthetic.py)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from factory_app.tasks import synthetic

load_data = synthetic.load_data


def _model(arrays: list[np.ndarray] | None, config: dict) -> keras.Model:
    keras.utils.set_random_seed(int(config["seed"]))
    model = keras.Sequential(
        [
            keras.Input(shape=(synthetic.SIDE, synthetic.SIDE, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(synthetic.CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=float(config["learning-rate"]), momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if arrays is not None:
        model.set_weights(arrays)
    return model


def initial_arrays(config: dict) -> list[np.ndarray]:
    return list(_model(None, config).get_weights())


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    model = _model(arrays, config)
    images, labels = data
    model.fit(images, labels, epochs=int(config["local-epochs"]), batch_size=32, verbose=0, shuffle=True)
    loss, accuracy = model.evaluate(images, labels, verbose=0)
    return (
        list(model.get_weights()),
        len(labels),
        {"train_loss": float(loss), "train_accuracy": float(accuracy)},
    )


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    images, labels = data
    loss, accuracy = _model(arrays, config).evaluate(images, labels, verbose=0)
    return len(labels), {"eval_loss": float(loss), "eval_accuracy": float(accuracy)}
