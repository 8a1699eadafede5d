"""The factory app's job pieces in-process (no Flower): run-config checks and checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from factory.paths import APPS_DIR

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
