"""The factory app's ML framework tasks in real federations on bare Flower (opt-in: ``-m slow``).

Each needs a host venv with the framework (installed once into the shared cache): scikit-learn from PyPI,
torch 2.13.0 from the CPU wheel on this machine's disk (PIP_FIND_LINKS=/opt/wheels), tensorflow-cpu from
PyPI (large). The SuperLink's venv has no framework at all: the initial model comes from a SuperNode
(the app's ``query`` path), as on a SuperLink image without the framework.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from factory.harness.bareflower import BareFederation
from factory.harness.federation import FederationRunner
from factory.harness.flwrenv import FlowerEnv, ensure_flower

pytestmark = pytest.mark.slow

FRAMEWORKS = {
    "sklearn": ("scikit-learn==1.9.1", "numpy==2.4.6"),  # the sklearn images' pins (matrix.yaml)
    "pytorch": ("torch==2.13.0",),
    "tensorflow": ("tensorflow-cpu==2.21.0",),
}


def _federate(task: str, server: FlowerEnv, nodes: FlowerEnv, workdir: Path) -> object:
    with BareFederation(workdir / "fed", server, supernode_env=nodes, num_supernodes=2) as federation:
        runner = FederationRunner(server, workdir / "runner", federation.connection(), poll_interval=2.0)
        return runner.run(rounds=2, task=task, expected_supernodes=2, timeout=1800)


@pytest.mark.parametrize("task", sorted(FRAMEWORKS))
def test_framework_task(task: str, flower_current: FlowerEnv, workdir: Path) -> None:
    if task == "pytorch":
        os.environ.setdefault("PIP_FIND_LINKS", "/opt/wheels")
    nodes = ensure_flower("1.42.0", FRAMEWORKS[task])
    outcome = _federate(task, flower_current, nodes, workdir)
    assert outcome.passed, (outcome.failures(), outcome.log[-3000:])  # loss falling, floor cleared
    assert {check.name for check in outcome.checks} >= {"loss_decreasing", "metric_floor"}
    assert outcome.start_info["initial_model_from"].startswith("node "), outcome.start_info
    accuracy = [record.evaluate_metrics["eval_accuracy"] for record in outcome.rounds]
    assert all(0.0 <= value <= 1.0 for value in accuracy)
