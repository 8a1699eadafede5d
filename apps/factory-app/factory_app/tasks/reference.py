"""A task trained in one process with FedAvg done by hand: the reference the floors in
apps/task-checks.toml are set and checked against (benchmarks/task_metrics.py, tests/e2e/test_job_units.py),
and the "one warm process" side of a round-time comparison. Updates are weighted by examples, as Flower's
FedAvg weights them."""

from __future__ import annotations

from typing import Any

from factory_app.tasks import load_task

# the app's run-config defaults (apps/factory-app/pyproject.toml [tool.flwr.app.config])
DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 42,
    "samples-per-node": 256,
    "learning-rate": 0.05,
    "local-epochs": 1,
}


def fedavg(task_name: str, partitions: int, rounds: int, config: dict[str, Any]) -> list[dict[str, float]]:
    """Examples-weighted evaluation metrics after each of ``rounds`` rounds over ``partitions`` nodes."""
    task = load_task(task_name)
    arrays = task.initial_arrays(config)
    data = [task.load_data(pid, partitions, config) for pid in range(partitions)]
    history = []
    for _ in range(rounds):
        updates = [task.train(arrays, train, config, arrays) for train, _ in data]
        total = sum(count for _, count, _ in updates)
        arrays = [sum(update[0][i] * update[1] / total for update in updates) for i in range(len(arrays))]
        evaluations = [task.evaluate(arrays, test, config) for _, test in data]
        examples = sum(count for count, _ in evaluations)
        history.append(
            {
                key: sum(count * metrics[key] for count, metrics in evaluations) / examples
                for key in evaluations[0][1]
            }
        )
    return history
