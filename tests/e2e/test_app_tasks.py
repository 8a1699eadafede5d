"""The factory app's tasks in-process (no Flower processes): FedAvg by hand over their train/evaluate
functions. Fast checks that the numpy task converges for any number of partitions the harness uses."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hostkit.paths import APPS_DIR

sys.path.insert(0, str(APPS_DIR / "factory-app"))

from factory_app.tasks import load_task

CONFIG = {"seed": 42, "samples-per-node": 256, "learning-rate": 0.05, "local-epochs": 1}


def _fedavg_metric(task_name: str, partitions: int, rounds: int, config: dict, metric: str) -> list[float]:
    """The examples-weighted mean of ``metric`` over the nodes, per round (as Flower's FedAvg aggregates)."""
    task = load_task(task_name)
    arrays = task.initial_arrays(config)
    data = [task.load_data(pid, partitions, config) for pid in range(partitions)]
    values = [_weighted([task.evaluate(arrays, test, config) for _, test in data], metric)]
    for _ in range(rounds):
        updates = [task.train(arrays, train, config, arrays) for train, _ in data]
        total = sum(count for _, count, _ in updates)
        arrays = [sum(update[0][i] * update[1] / total for update in updates) for i in range(len(arrays))]
        values.append(_weighted([task.evaluate(arrays, test, config) for _, test in data], metric))
    return values


def _weighted(evaluations: list[tuple], metric: str) -> float:
    return sum(count * m[metric] for count, m in evaluations) / sum(count for count, _ in evaluations)


@pytest.mark.parametrize("partitions", [2, 10])
def test_numpy_floor_separates_a_trained_model_from_an_untrained_one(partitions: int) -> None:
    """The floor in apps/task-checks.toml is reached after the 2 rounds a pair test runs at least, and
    the untrained (initial) model is far below it: the check can fail."""
    from factory.harness.federation import task_criteria

    criteria = task_criteria("numpy")
    untrained, _, after_two = _fedavg_metric("numpy", partitions, 2, CONFIG, criteria.metric)
    assert untrained <= 0.0 < criteria.floor
    assert after_two >= criteria.floor


@pytest.mark.parametrize("partitions", [2, 10, 30])
def test_numpy_task_loss_falls_for_any_partition_count(partitions: int) -> None:
    losses = _fedavg_metric("numpy", partitions, 3, CONFIG, "eval_loss")[1:]  # after each round
    assert all(np.isfinite(losses))
    assert losses[0] > losses[1] > losses[2], losses


def test_numpy_task_data_is_deterministic_and_differs_per_partition() -> None:
    task = load_task("numpy")
    first = task.load_data(0, 2, CONFIG)[0][0]
    assert np.array_equal(first, task.load_data(0, 2, CONFIG)[0][0])
    assert not np.array_equal(first, task.load_data(1, 2, CONFIG)[0][0])


def test_proximal_term_pulls_towards_the_global_model() -> None:
    task = load_task("numpy")
    train, _ = task.load_data(0, 2, CONFIG)
    start = task.initial_arrays(CONFIG)
    free, _, _ = task.train(start, train, CONFIG, start)
    held, _, _ = task.train(start, train, {**CONFIG, "proximal-mu": 5.0}, start)
    assert np.linalg.norm(held[0]) < np.linalg.norm(free[0])


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown task 'jax'"):
        load_task("jax")
