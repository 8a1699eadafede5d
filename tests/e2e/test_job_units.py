"""The factory app's job pieces in-process (no Flower): run-config checks and checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hostkit.paths import APPS_DIR

sys.path.insert(0, str(APPS_DIR / "factory-app"))

from factory_app.checkpoint import CheckpointStore
from factory_app.jobconfig import DPMode, JobConfigError, job_identity, parse

BASE = {"task": "numpy", "strategy": "fedavg", "num-server-rounds": 3, "min-nodes": 2}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds: must be within 1..100000, got 0"),
        ({"num-server-rounds": -1}, "num-server-rounds: must be within 1..100000, got -1"),
        ({"num-server-rounds": "five"}, "num-server-rounds: must be an integer, got 'five'"),
        ({"num-server-rounds": True}, "num-server-rounds: must be an integer"),
        ({"strategy": "fedfoo"}, "strategy: unknown strategy 'fedfoo'"),
        ({"min-nodes": 0}, "min-nodes: must be within 1..10000, got 0"),
        ({"round-timeout": 0}, "round-timeout: must be > 0 seconds"),
        ({"dp": "local"}, "dp: unknown mode 'local'"),
        ({"dp": "server-fixed", "dp-noise-multiplier": -0.1}, "dp-noise-multiplier: must be >= 0"),
        ({"dp": "server-fixed", "dp-noise-multiplier": "nan"}, "dp-noise-multiplier: must be a finite"),
        ({"dp": "client-adaptive", "dp-clipping-norm": 0}, "dp-clipping-norm: must be > 0"),
        ({"dp": "server-adaptive", "dp-sampled-clients": 3}, "dp-sampled-clients: must be within 1..2"),
        (
            {"dp": "server-adaptive", "dp-noise-multiplier": 0.5},
            "dp-noise-multiplier: with adaptive clipping it must be below dp-sampled-clients/10 = 0.2",
        ),
        ({"secagg": "secaggplus"}, "requires a LegacyContext"),
        ({"secagg": "on"}, "secagg: unknown mode 'on'"),
        ({"checkpoint-keep": 0}, "checkpoint-keep: must be >= 1"),
        ({"job-id": "../etc"}, "job-id: '../etc' must be 1-64 characters"),
    ],
)
def test_bad_values_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(JobConfigError, match=r"^run-config ") as caught:
        parse({**BASE, **change})
    assert message in str(caught.value)


def test_good_values() -> None:
    settings = parse({**BASE, "dp": "Client-Fixed", "dp-noise-multiplier": 0.0, "dp-clipping-norm": 2})
    assert settings.dp.mode is DPMode.CLIENT_FIXED and settings.dp.mode.client_side
    assert settings.dp.sampled_clients == 2  # 0 (default) means min-nodes
    assert settings.rounds == 3 and settings.checkpoint_keep == 3 and settings.job_id.startswith("job-")
    # DP values are not checked while DP is off
    assert parse({**BASE, "dp-clipping-norm": -1}).dp.mode is DPMode.OFF


def test_job_identity_ignores_operational_keys_only() -> None:
    same = job_identity({**BASE, "num-server-rounds": 9, "checkpoint-dir": "/x", "round-timeout": 5})
    assert same == job_identity(BASE)
    assert job_identity({**BASE, "learning-rate": 0.1}) != job_identity(BASE)
    assert job_identity({**BASE, "job-id": "mine"}) == "mine"


def test_checkpoints_keep_the_newest_and_skip_damaged_ones(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, "job-a", keep=2)
    assert store.latest() is None
    for number in (1, 2, 3):
        store.save(number, 5, [np.full(3, float(number)), np.zeros(1)], {"eval_loss": 1.0 / number})
    assert store.rounds() == [2, 3]
    latest = store.latest()
    assert latest is not None and latest.round == 3 and latest.arrays[0].tolist() == [3.0, 3.0, 3.0]
    assert latest.meta["metrics"] == {"eval_loss": 1.0 / 3}
    # a torn write of round 3 (arrays damaged): round 2 is used
    (store.directory / "round-00003.npz").write_bytes(b"garbage")
    fallback = store.latest()
    assert fallback is not None and fallback.round == 2
    # another job's checkpoint in this job's directory is not taken
    (store.directory / "round-00002.json").write_text(json.dumps({"job": "job-b", "round": 2}))
    assert store.latest() is None
    final = store.save_final(5, [np.ones(2)], {})
    assert final.name == "final.npz" and json.loads(final.with_suffix(".json").read_text())["round"] == 5
    assert not list(store.directory.glob(".*.tmp"))  # no temporary files left behind


# -- the use cases --------------------------------------------------------------------------------------

TASK_CONFIG = {"seed": 42, "samples-per-node": 256, "learning-rate": 0.05, "local-epochs": 1}


@pytest.mark.parametrize("task", ["anomaly", "edge-image"])
@pytest.mark.parametrize("partitions", [2, 10])
def test_numpy_use_cases_clear_their_floor_from_round_two(task: str, partitions: int) -> None:
    from factory.harness.federation import task_criteria

    criteria = task_criteria(task)
    from factory_app.tasks.reference import fedavg

    history = fedavg(task, partitions, 2, TASK_CONFIG)
    assert history[1]["eval_loss"] < history[0]["eval_loss"]
    assert history[1][criteria.metric] >= criteria.floor, history


def test_tabular_with_scikit_learn_clears_its_floor() -> None:
    """In the host Flower venv (it has scikit-learn, as the sklearn images do)."""
    import subprocess

    from factory.harness.federation import task_criteria
    from factory.harness.flwrenv import ensure_flower
    from factory.model.matrix import load_matrix
    from hostkit.paths import REPO_ROOT

    # the packages of the sklearn SuperNode images (matrix.yaml), as the bare pair tests install them
    variant = next(
        v for v in load_matrix().variants if v.name.startswith("supernode-1.42.0-") and "-sklearn-" in v.name
    )
    python = ensure_flower("1.42.0", tuple(variant.pins.framework_packages)).python
    script = Path(REPO_ROOT) / "benchmarks" / "task_metrics.py"
    result = subprocess.run(
        [str(python), str(script), "tabular", "--rounds", "2", "--partitions", "2,10"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    criteria = task_criteria("tabular")
    for line in result.stdout.splitlines():
        rounds = json.loads(line)["rounds"]
        assert rounds[1]["eval_loss"] < rounds[0]["eval_loss"]
        assert rounds[1][criteria.metric] >= criteria.floor, line


def test_a_nodes_own_csv_and_npz_files(tmp_path: Path) -> None:
    from factory_app.tasks import load_task, localdata

    rng = np.random.default_rng(0)
    readings = rng.normal(0.0, 1.0, (50, 12))
    labels = (np.arange(50) % 10 == 0).astype(int)
    table = np.column_stack([readings[:, :5], labels, readings[:, 5:]])
    csv = tmp_path / "sensors.csv"
    header = ",".join([*(f"f{i}" for i in range(5)), "label", *(f"f{i}" for i in range(5, 12))])
    np.savetxt(csv, table, delimiter=",", header=header, comments="")
    config = {**TASK_CONFIG, "data-path": str(csv)}
    (train_x, _), (test_x, test_y) = load_task("anomaly").load_data(0, 1, config)
    assert train_x.shape[1] == 12 and len(train_x) + len(test_x) < 50  # labelled anomalies not trained on
    assert set(np.unique(test_y)) <= {0, 1}

    images = tmp_path / "images.npz"
    np.savez(images, x=rng.normal(0.0, 1.0, (40, 16, 16)), y=np.arange(40) % 10)
    (train_x, train_y), (test_x, _) = load_task("edge-image").load_data(
        0, 1, {**TASK_CONFIG, "data-path": str(images)}
    )
    assert train_x.shape == (32, 256) and len(test_x) == 8 and train_y.max() <= 9

    with pytest.raises(localdata.DataError, match="is not a readable file"):
        localdata.load(str(tmp_path / "missing.csv"))
    with pytest.raises(localdata.DataError, match=r"must end in \.csv or \.npz"):
        localdata.load(str(csv.rename(tmp_path / "sensors.txt")))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,x,0\n")
    with pytest.raises(localdata.DataError, match="not a numeric CSV"):
        localdata.load(str(bad))
    no_x = tmp_path / "no-x.npz"
    np.savez(no_x, y=np.arange(3))
    with pytest.raises(localdata.DataError, match="has no array 'x'"):
        localdata.load(str(no_x))
    with pytest.raises(localdata.DataError, match="run-config num-features says 12"):
        load_task("anomaly").load_data(0, 1, {**TASK_CONFIG, "data-path": str(images)})
