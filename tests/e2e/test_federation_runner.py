"""FederationRunner with a stand-in for the ``flwr`` CLI: it looks for online SuperNodes every
``online_poll_interval`` (not every ``poll_interval``, the pace of following a submitted run), tells how
long the look and the submission took (bench_e2e's timeline reads it), follows a run through one streamed
``flwr log`` with the status read every ``status_interval`` and at the stream's end, falls back to polling
when the stream ends before the run, and keeps the followed rounds when the final read comes back short."""

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


class StandInStream:
    """A streamed ``flwr log``: ``text`` is what it wrote so far; it ends once ``ends_after`` reads were
    made (None: never by itself)."""

    def __init__(self, chunks: list[str], ends_after: int | None) -> None:
        self.chunks = chunks
        self.ends_after = ends_after
        self.reads = 0
        self.stopped = False

    def ended(self) -> bool:
        return self.ends_after is not None and self.reads >= self.ends_after

    def text(self) -> str:
        self.reads += 1
        return "".join(self.chunks[: self.reads])

    def errors(self) -> str:
        return "Connection reset by peer" if self.ended() else ""

    def stop(self) -> None:
        self.stopped = True


class StandInCLI:
    """Answers as ``flwr`` does: no SuperNode online for ``offline_looks`` looks, then two; a run that has
    finished at once, with an empty log (streamed: a stream that has already ended)."""

    def __init__(self, offline_looks: int) -> None:
        self.offline_looks = offline_looks
        self.looks = 0
        self.submitted: list[dict[str, Any]] = []
        self.streams: list[StandInStream] = []

    def stream_log(self, run_id: int, path: Path) -> StandInStream:
        self.streams.append(StandInStream([""], ends_after=0))
        return self.streams[-1]

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

    def stream_log(self, run_id: int, path: Path) -> StandInStream:
        # streamed, the round comes through the stream and the only --show read is the final one
        self.reads += 1
        return super().stream_log(run_id, path)


def _runner(tmp_path: Path, progress: io.StringIO | None = None, **options: Any) -> FederationRunner:
    return FederationRunner(
        FlowerEnv.__new__(FlowerEnv),
        tmp_path,
        Connection("127.0.0.1:1", None),
        progress=Progress(progress or io.StringIO()),
        **options,
    )


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "polled"])
def test_a_failed_last_log_read_keeps_the_rounds_that_were_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    monkeypatch.setattr(waiting.time, "sleep", lambda _seconds: None)
    runner = _runner(tmp_path, stream=streamed)
    cli = DroppedFinalRead()
    if streamed:
        followed = StandInStream([DroppedFinalRead.ROUND], ends_after=0)
        cli.stream_log = lambda run_id, path: followed  # type: ignore[method-assign]
        cli.reads = 1  # the final --show read is the first run_log call: make it come back empty
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=1, expected_supernodes=2, timeout=60)
    assert cli.reads == 2
    assert [record.round for record in outcome.rounds] == [1], outcome.log
    assert "FF-ROUND" in outcome.log


class Clock:
    """time.monotonic and time.sleep of a test: sleeping moves the clock on, at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _round(number: int) -> str:
    return (
        f'INFO : FF-ROUND {{"round": {number}, "seconds": 2.0, "finished": 1.0, "evaluate_metrics": {{}}}}\n'
    )


class StreamedRun(StandInCLI):
    """A run whose three rounds arrive on the stream, the stream ending at its ``ends_after``th read; the
    run reads "running" until ``finished_after`` status reads were made; every --show read is logged."""

    def __init__(self, ends_after: int, finished_after: int) -> None:
        super().__init__(offline_looks=0)
        self.ends_after = ends_after
        self.finished_after = finished_after
        self.statuses: list[float] = []
        self.shows: list[float] = []
        self.clock: Clock | None = None

    def stream_log(self, run_id: int, path: Path) -> StandInStream:
        chunks = ["", _round(1), "", _round(2), "", "", _round(3)] + [""] * 100
        self.streams.append(StandInStream(chunks, ends_after=self.ends_after))
        return self.streams[-1]

    def run_status(self, run_id: int) -> dict[str, Any]:
        assert self.clock is not None
        self.statuses.append(self.clock.now)
        done = len(self.statuses) >= self.finished_after
        return {"run-id": run_id, "status": "finished:completed" if done else "running"}

    def run_log(self, run_id: int) -> str:
        assert self.clock is not None
        self.shows.append(self.clock.now)
        return _round(1) + _round(2) + _round(3)


def _follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: StreamedRun) -> tuple[Any, Clock, str]:
    clock = Clock()
    cli.clock = clock
    monkeypatch.setattr(federation.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(federation.time, "sleep", clock.sleep)
    told: list[int] = []
    progress = io.StringIO()
    runner = _runner(tmp_path, progress, poll_interval=10.0, status_interval=30.0)
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=3, timeout=900, on_round=lambda record: told.append(record.round))
    assert told == [1, 2, 3]
    return outcome, clock, progress.getvalue()


def test_a_streamed_run_reads_its_status_every_status_interval_and_when_the_stream_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = StreamedRun(ends_after=75, finished_after=3)  # 75 s of stream: status at 30 s, 60 s, its end
    outcome, clock, _ = _follow(tmp_path, monkeypatch, cli)
    assert outcome.status == "finished:completed"
    started = clock.now - 75
    assert [round(at - started) for at in cli.statuses] == [30, 60, 75]
    assert set(clock.sleeps) == {1.0}  # the stream's file read every second, no poll_interval pause
    assert len(cli.shows) == 1 and cli.streams[0].stopped  # the final --show read only
    assert [record.round for record in outcome.rounds] == [1, 2, 3]


def test_a_stream_that_ends_before_the_run_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the stream dies after its 5th read (2 rounds in), the run still runs: polled every poll_interval
    cli = StreamedRun(ends_after=5, finished_after=3)
    outcome, clock, progress = _follow(tmp_path, monkeypatch, cli)
    assert outcome.status == "finished:completed"
    assert "the log stream ended before the run (Connection reset by peer): following it by polling" in (
        progress
    )
    assert clock.sleeps == [1.0] * 5 + [10.0]  # stream reads a second apart, then one poll_interval
    assert len(cli.statuses) == 3 and len(cli.shows) == 3  # two polls and the final read
    assert [record.round for record in outcome.rounds] == [1, 2, 3]


def test_polling_alone_when_the_stream_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = StreamedRun(ends_after=5, finished_after=2)
    clock = Clock()
    cli.clock = clock
    monkeypatch.setattr(federation.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(federation.time, "sleep", clock.sleep)
    runner = _runner(tmp_path, poll_interval=10.0, stream=False)
    runner.cli = cli  # type: ignore[assignment]
    outcome = runner.run(rounds=3, timeout=900)
    assert outcome.status == "finished:completed" and not cli.streams
    assert clock.sleeps == [10.0] and len(cli.statuses) == 2 and len(cli.shows) == 3
