"""FederationRunner's steps before and at the submission, with a stand-in for the ``flwr`` CLI: it looks for
online SuperNodes every ``online_poll_interval`` (not every ``poll_interval``, the pace of following a
submitted run), and tells how long the look and the submission took (bench_e2e's timeline reads it)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from factory.harness import federation
from factory.harness.federation import Connection, FederationRunner
from factory.harness.flwrenv import FlowerEnv
from hostkit import waiting
from hostkit.progress import Progress


class StandInCLI:
    """Answers as ``flwr`` does: no SuperNode online for ``offline_looks`` looks, then two; a run that has
    finished at once, with an empty log."""

    def __init__(self, offline_looks: int) -> None:
        self.offline_looks = offline_looks
        self.looks = 0
        self.submitted: list[dict[str, Any]] = []

    def supernodes(self) -> list[dict[str, Any]]:
        self.looks += 1
        status = "offline" if self.looks <= self.offline_looks else "online"
        return [{"node-id": 1, "status": status}, {"node-id": 2, "status": status}]

    def submit(self, app_dir: Path, run_config: dict[str, Any]) -> int:
        self.submitted.append(run_config)
        return 7

    def run_status(self, run_id: int) -> dict[str, Any]:
        return {"run-id": run_id, "status": "finished:completed"}

    def run_log(self, run_id: int) -> str:
        return ""


def test_online_supernodes_are_looked_for_every_second_then_the_run_is_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(waiting.time, "sleep", pauses.append)
    stream = io.StringIO()
    runner = FederationRunner(
        FlowerEnv.__new__(FlowerEnv), tmp_path, Connection("127.0.0.1:1", None), progress=Progress(stream)
    )
    cli = StandInCLI(offline_looks=2)
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=1, expected_supernodes=2, timeout=60)
    assert cli.looks == 3 and len(cli.submitted) == 1
    assert pauses == [runner.online_poll_interval] * 2 == [1.0, 1.0]  # not poll_interval (5 s)
    assert outcome.run_id == 7
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("==> 2 of 2 SuperNodes online (") for line in lines), lines
    assert any(line.startswith("==> run 7: numpy/fedavg, 1 rounds, 2 nodes (flwr run ") for line in lines), (
        lines
    )


def test_too_few_online_supernodes_are_told_and_nothing_is_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiting.time, "sleep", lambda _seconds: None)
    monkeypatch.setattr(federation.time, "monotonic", iter(range(0, 10_000, 100)).__next__)
    stream = io.StringIO()
    runner = FederationRunner(
        FlowerEnv.__new__(FlowerEnv), tmp_path, Connection("127.0.0.1:1", None), progress=Progress(stream)
    )
    cli = StandInCLI(offline_looks=10**6)
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=1, expected_supernodes=2, timeout=60)
    assert outcome.status == "not submitted: 0 of 2 SuperNodes online" and not cli.submitted
    assert "==> 0 of 2 SuperNodes online (" in stream.getvalue()


class DroppedFinalRead(StandInCLI):
    """The run reports its round while it is followed; the log read after its end comes back empty, as
    ``flwr log`` prints nothing when the tunnel's connection drops at that moment."""

    ROUND = 'INFO : FF-ROUND {"round": 1, "seconds": 2.0, "finished": 1.0, "evaluate_metrics": {}}\n'

    def __init__(self) -> None:
        super().__init__(offline_looks=0)
        self.reads = 0

    def run_log(self, run_id: int) -> str:
        self.reads += 1
        return self.ROUND if self.reads == 1 else ""


def test_a_failed_last_log_read_keeps_the_rounds_that_were_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiting.time, "sleep", lambda _seconds: None)
    runner = FederationRunner(
        FlowerEnv.__new__(FlowerEnv),
        tmp_path,
        Connection("127.0.0.1:1", None),
        progress=Progress(io.StringIO()),
    )
    cli = DroppedFinalRead()
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=1, expected_supernodes=2, timeout=60)
    assert cli.reads == 2
    assert [record.round for record in outcome.rounds] == [1], outcome.log
    assert "FF-ROUND" in outcome.log
