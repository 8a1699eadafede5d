"""The federation runner: run a Flower app on a SuperLink for N rounds and check the outcome.

It talks to the SuperLink's Control API only through the ``flwr`` CLI of the matching Flower version, the
way a user does, with its own FLWR_HOME and ``config.toml``. In the cloud the address is the local end of an
SSH tunnel to the SuperLink VM (factory/harness/tunnel.py) and the CA comes from OneGate; on bare Flower
it is the loopback address directly.

Checks, each recorded as a named result: every expected SuperNode registered/online (``flwr supernode
list``), the run finished (``finished:completed``) within the deadline, every round reported (FF-ROUND lines
the app prints, read back with ``flwr log``), all metrics finite, and the task's own criteria
(``apps/task-checks.toml``): the evaluation loss decreasing round after round, and the final round's metric
clearing the task's floor.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from factory.harness.flwrenv import FlowerEnv, flower_environment
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import APPS_DIR
from hostkit.progress import DEFAULT as PROGRESS
from hostkit.progress import Progress
from hostkit.waiting import wait_until

DEFAULT_APP = APPS_DIR / "factory-app"
TASK_CHECKS_FILE = APPS_DIR / "task-checks.toml"
# The task every pair runs first, whatever its framework: fast, needs numpy only, checks the wiring.
CANARY_TASK = "numpy"
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "krum", "multikrum", "fedtrimmedavg")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
REPORT_LINE = re.compile(r"FF-(START|ROUND|END) (\{.*\})")
CONNECTION_NAME = "factory"
MAX_FAILED_POLLS = 5


@dataclass(frozen=True)
class Connection:
    """A SuperLink Control API as the CLI sees it; ``ca_cert=None`` means insecure (plain HTTP)."""

    address: str
    ca_cert: Path | None

    def config_toml(self) -> str:
        lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "", f"[superlink.{CONNECTION_NAME}]"]
        lines.append(f'address = "{self.address}"')
        if self.ca_cert is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.ca_cert}"')
        return "\n".join(lines) + "\n"


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class FlowerCLI:
    """The ``flwr`` command of one Flower venv, bound to one connection through its own FLWR_HOME."""

    def __init__(self, env: FlowerEnv, home: Path, connection: Connection) -> None:
        self.env = env
        self.home = home
        self.connection = connection
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(connection.config_toml())

    def call(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.env.executable("flwr")), *args]
        environment = flower_environment(flwr_home=self.home)
        environment["COLUMNS"] = "200"
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=environment, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise FactoryError(f"`flwr {' '.join(args)}` did not answer within {timeout:.0f} s") from error
        if check and result.returncode != 0:
            output = strip_ansi(result.stdout + result.stderr).strip()
            raise FactoryError(f"`flwr {' '.join(args)}` failed (exit {result.returncode}): {output[-1500:]}")
        return result

    def call_json(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        result = self.call(*args, "--format", "json", timeout=timeout, check=False)
        text = strip_ansi(result.stdout).strip()
        start = text.find("{")
        try:
            payload = json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            output = strip_ansi(result.stdout + result.stderr).strip()
            raise FactoryError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {result.returncode}): {output[-1500:]}"
            )
        if payload.get("success") is False:
            raise FactoryError(f"`flwr {' '.join(args)}` failed: {payload.get('error-message', payload)}")
        return payload

    def register_supernode(self, public_key: Path, name: str) -> None:
        self.call("supernode", "register", str(public_key), CONNECTION_NAME, "--name", name)

    def supernodes(self) -> list[dict[str, Any]]:
        payload = self.call_json("supernode", "list", CONNECTION_NAME)
        nodes = payload.get("nodes", [])
        return nodes if isinstance(nodes, list) else []

    def submit(self, app_dir: Path, run_config: dict[str, Any]) -> int:
        overrides = " ".join(f"{key}={_toml_value(value)}" for key, value in run_config.items())
        args = ["run", str(app_dir), CONNECTION_NAME]
        if overrides:
            args += ["--run-config", overrides]
        payload = self.call_json(*args, timeout=300.0)
        try:
            return int(payload["run-id"])
        except (KeyError, TypeError, ValueError):
            raise FactoryError(f"`flwr run` answered without a run id: {payload}") from None

    def run_status(self, run_id: int) -> dict[str, Any]:
        payload = self.call_json("list", CONNECTION_NAME, "--run-id", str(run_id))
        runs = payload.get("runs", [])
        if not runs:
            raise FactoryError(f"`flwr list --run-id {run_id}` does not know the run: {payload}")
        return dict(runs[0])

    def run_log(self, run_id: int) -> str:
        result = self.call("log", str(run_id), CONNECTION_NAME, "--show", timeout=120.0, check=False)
        return strip_ansi(result.stdout)

    def stream_log(self, run_id: int, path: Path) -> LogStream:
        """Start one ``flwr log <run-id>`` (streaming, not --show) writing the run's log into ``path`` as the
        Control API sends it; the process ends by itself once the run finished (Flower's
        ``flwr/cli/log.py`` start_stream, the Control servicer's ``_stream_logs``). Unbuffered, or Python
        would hold the lines back until it exits."""
        environment = flower_environment(flwr_home=self.home)
        environment.update(COLUMNS="200", PYTHONUNBUFFERED="1")
        command = [str(self.env.executable("flwr")), "log", str(run_id), CONNECTION_NAME, "--stream"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as output, open(path.with_suffix(".err"), "wb") as errors:
            process = subprocess.Popen(command, stdout=output, stderr=errors, env=environment)
        return LogStream(process, path)

    def stop_run(self, run_id: int) -> None:
        self.call("stop", str(run_id), CONNECTION_NAME, check=False)


class LogStream:
    """A run's log as one streaming ``flwr log`` process writes it into a file: read it as often as wanted,
    with no process started per look."""

    def __init__(self, process: subprocess.Popen, path: Path) -> None:
        self.process = process
        self.path = path

    def ended(self) -> bool:
        return self.process.poll() is not None

    def text(self) -> str:
        """The complete lines written so far (a line still being written waits for the next look)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return ""
        if self.process.poll() is None:
            data = data[: data.rfind(b"\n") + 1]
        return strip_ansi(data.decode(errors="replace"))

    def errors(self) -> str:
        try:
            return strip_ansi(self.path.with_suffix(".err").read_text(errors="replace")).strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass(frozen=True)
class TaskCriteria:
    """What a task must reach to pass (one table of apps/task-checks.toml)."""

    task: str
    metric: str
    floor: float
    loss_must_decrease: bool
    why: str
    strategies: tuple[str, ...] = ("fedavg",)  # the strategies the floor was measured (holds) for


def load_task_criteria(path: Path = TASK_CHECKS_FILE) -> dict[str, TaskCriteria]:
    """Every task's pass criteria; a ConfigError naming the file and field when one is missing or wrong."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(source, "", f"cannot read the task checks: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"not valid TOML: {error}") from None
    criteria = {}
    for task, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(source, task, "must be a table ([task] with metric, floor, ...)")
        unknown = sorted(set(table) - {"metric", "floor", "loss_must_decrease", "why", "strategies"})
        if unknown:
            raise ConfigError(source, f"{task}.{unknown[0]}", "unknown key")
        metric, floor = table.get("metric"), table.get("floor")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(source, f"{task}.metric", "must name an evaluation metric, e.g. eval_accuracy")
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor):
            raise ConfigError(source, f"{task}.floor", f"must be a finite number, got {floor!r}")
        decrease = table.get("loss_must_decrease", True)
        if not isinstance(decrease, bool):
            raise ConfigError(
                source, f"{task}.loss_must_decrease", f"must be true or false, got {decrease!r}"
            )
        why = table.get("why")
        if not isinstance(why, str) or not why.strip():
            raise ConfigError(source, f"{task}.why", "must say where the floor comes from (a measurement)")
        strategies = table.get("strategies", ["fedavg"])
        if not isinstance(strategies, list) or not strategies or any(s not in STRATEGIES for s in strategies):
            raise ConfigError(
                source, f"{task}.strategies", f"must list strategies among {', '.join(STRATEGIES)}"
            )
        criteria[task] = TaskCriteria(
            task, metric, float(floor), decrease, " ".join(why.split()), tuple(strategies)
        )
    return criteria


def task_criteria(task: str, path: Path = TASK_CHECKS_FILE) -> TaskCriteria:
    known = load_task_criteria(path)
    if task not in known:
        raise FactoryError(
            f"task {task!r} has no pass criteria in {path} (known: {', '.join(sorted(known)) or 'none'})"
        )
    return known[task]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class RoundRecord:
    round: int
    seconds: float
    train_seconds: float
    evaluate_seconds: float
    finished: float
    train_metrics: dict[str, float]
    evaluate_metrics: dict[str, float]
    train_replies: int
    evaluate_replies: int
    errors: list[str]


@dataclass
class FederationOutcome:
    """What one federation run did, and whether it passed."""

    app: str
    task: str
    strategy: str
    rounds_requested: int
    expected_supernodes: int
    metric: str = ""  # the task's floored metric (apps/task-checks.toml) and its floor
    floor: float | None = None
    run_id: int | None = None
    status: str = ""
    submitted_at: float = 0.0
    finished_at: float = 0.0
    first_round_finished_at: float | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    supernodes: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    start_info: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        return [f"{check.name}: {check.detail}" for check in self.checks if not check.passed]

    def to_dict(self, include_log: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        if not include_log:
            data.pop("log")
        return data


def parse_report_lines(log_text: str) -> tuple[dict[str, Any], list[RoundRecord], dict[str, Any] | None]:
    """FF-START, FF-ROUND and FF-END lines of the factory app's ServerApp, from ``flwr log`` output."""
    start: dict[str, Any] = {}
    end: dict[str, Any] | None = None
    rounds: dict[int, RoundRecord] = {}
    for match in REPORT_LINE.finditer(strip_ansi(log_text)):
        try:
            payload = json.loads(match.group(2))
        except json.JSONDecodeError:
            continue
        kind = match.group(1)
        if kind == "START":
            start = payload
        elif kind == "END":
            end = payload
        else:
            train, evaluate = payload.get("train", {}), payload.get("evaluate", {})
            record = RoundRecord(
                round=int(payload["round"]),
                seconds=float(payload["seconds"]),
                train_seconds=float(payload.get("train_seconds", math.nan)),
                evaluate_seconds=float(payload.get("evaluate_seconds", math.nan)),
                finished=float(payload.get("finished", math.nan)),
                train_metrics=dict(payload.get("train_metrics", {})),
                evaluate_metrics=dict(payload.get("evaluate_metrics", {})),
                train_replies=int(train.get("replies", 0)) - len(train.get("errors", [])),
                evaluate_replies=int(evaluate.get("replies", 0)) - len(evaluate.get("errors", [])),
                errors=[*train.get("errors", []), *evaluate.get("errors", [])],
            )
            rounds[record.round] = record
    return start, [rounds[number] for number in sorted(rounds)], end


def _finite(values: dict[str, Any]) -> bool:
    return all(
        not isinstance(value, int | float) or isinstance(value, bool) or math.isfinite(value)
        for value in values.values()
    )


def supernode_is_online(node: dict[str, Any]) -> bool:
    return str(node.get("status", "")).lower() == "online"


def evaluate_checks(outcome: FederationOutcome, criteria: TaskCriteria | None) -> list[Check]:
    """The pass/fail checks of one run, from what was observed (pure: unit-testable). ``criteria``: the
    task's loss and floor rules; None checks only the generic rules."""
    checks = _generic_checks(outcome)
    return checks if criteria is None else checks + _task_checks(outcome, criteria)


def _generic_checks(outcome: FederationOutcome) -> list[Check]:
    """Every run: nodes online, run completed, every round reported by every node, finite metrics."""
    online = [node for node in outcome.supernodes if supernode_is_online(node)]
    numbers = [record.round for record in outcome.rounds]
    wanted = list(range(1, outcome.rounds_requested + 1))
    short = [
        record.round
        for record in outcome.rounds
        if min(record.train_replies, record.evaluate_replies) < outcome.expected_supernodes or record.errors
    ]
    bad = [
        record.round
        for record in outcome.rounds
        if not (_finite(record.train_metrics) and _finite(record.evaluate_metrics))
        or not record.evaluate_metrics
    ]
    return [
        Check(
            "supernodes_online",
            len(online) >= outcome.expected_supernodes,
            f"{len(online)} of {outcome.expected_supernodes} expected SuperNodes online "
            f"({len(outcome.supernodes)} registered)",
        ),
        Check("run_completed", outcome.status == "finished:completed", f"run status {outcome.status!r}"),
        Check("all_rounds_finished", numbers == wanted, f"rounds reported {numbers}, wanted {wanted}"),
        Check(
            "every_node_every_round",
            bool(outcome.rounds) and not short,
            f"rounds missing replies or with errors: {short}"
            if short
            else "all nodes replied in every round",
        ),
        Check(
            "metrics_finite",
            bool(outcome.rounds) and not bad,
            f"rounds with missing or non-finite metrics: {bad}",
        ),
    ]


def _task_checks(outcome: FederationOutcome, criteria: TaskCriteria) -> list[Check]:
    """The task's own rules (apps/task-checks.toml): the loss falls, the final metric reaches the floor."""
    checks = []
    if criteria.loss_must_decrease:
        losses = [record.evaluate_metrics.get("eval_loss", math.nan) for record in outcome.rounds]
        falling = len(losses) >= 2 and all(later < earlier for earlier, later in itertools.pairwise(losses))
        checks.append(
            Check("loss_decreasing", falling, f"eval_loss per round {[round(x, 6) for x in losses]}")
        )
    final = outcome.rounds[-1].evaluate_metrics.get(criteria.metric) if outcome.rounds else None
    number = final if isinstance(final, int | float) and not isinstance(final, bool) else math.nan
    if outcome.strategy not in criteria.strategies:
        # e.g. FedAdam moves each weight by about its server learning rate per round: no floor was
        # measured for it, and none is made up; the loss must still fall and the value is recorded.
        checks.append(
            Check(
                "metric_floor",
                math.isfinite(number),
                f"final {criteria.metric} {number:.4g}; no floor stated for strategy {outcome.strategy} "
                f"(floors hold for {', '.join(criteria.strategies)})",
            )
        )
        return checks
    reached = math.isfinite(number) and number >= criteria.floor
    checks.append(
        Check(
            "metric_floor",
            reached,
            f"final {criteria.metric} {number:.4g} "
            + (">=" if reached else "below")
            + f" floor {criteria.floor:g}"
            + (f" (round {outcome.rounds[-1].round})" if outcome.rounds else " (no round reported)"),
        )
    )
    return checks


@dataclass
class FederationRunner:
    """Runs one app on one SuperLink with the ``flwr`` CLI of ``flower`` and checks the result."""

    flower: FlowerEnv
    workdir: Path
    connection: Connection
    progress: Progress = PROGRESS
    poll_interval: float = 5.0  # between two looks at a submitted run (two flwr CLI processes each)
    # Follow a submitted run with one streamed ``flwr log`` process, read from its file every
    # stream_read_interval, and its status with ``flwr ls`` every status_interval and when the stream
    # ends; a stream that ends before the run did (a dropped tunnel) falls back to polling. False: poll.
    stream: bool = True
    status_interval: float = 30.0
    stream_read_interval: float = 1.0
    # between two looks for online SuperNodes before the run is submitted: a short wait, which a look
    # every poll_interval would lengthen by up to that much (issue 13)
    online_poll_interval: float = 1.0

    def __post_init__(self) -> None:
        self.cli = FlowerCLI(self.flower, self.workdir / "flwr-home", self.connection)

    def wait_for_supernodes(self, expected: int, deadline: float) -> list[dict[str, Any]]:
        """``flwr supernode list`` until ``expected`` nodes are online, or the deadline passes."""
        nodes: list[dict[str, Any]] = []

        def enough_online() -> bool:
            try:
                nodes[:] = self.cli.supernodes()
            except FactoryError:
                nodes.clear()
            return sum(1 for node in nodes if supernode_is_online(node)) >= expected

        with contextlib.suppress(TimeoutError):
            wait_until(
                enough_online, max(0.0, deadline - time.monotonic()), interval=self.online_poll_interval,
                what=f"{expected} SuperNodes online",
            )  # fmt: skip
        return list(nodes)

    def run(
        self,
        rounds: int,
        strategy: str = "fedavg",
        task: str = CANARY_TASK,
        expected_supernodes: int = 2,
        app_dir: Path = DEFAULT_APP,
        timeout: float = 900.0,
        extra_config: dict[str, Any] | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> FederationOutcome:
        """Submit ``app_dir`` for ``rounds`` rounds of ``task`` once the SuperNodes are online, follow it
        to its end (or ``timeout``), and check what it reported."""
        if strategy not in STRATEGIES:
            raise FactoryError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
        criteria = task_criteria(task)
        outcome = FederationOutcome(
            app=app_dir.name,
            task=task,
            strategy=strategy,
            rounds_requested=rounds,
            expected_supernodes=expected_supernodes,
            metric=criteria.metric,
            floor=criteria.floor,
        )
        deadline = time.monotonic() + timeout
        looking = time.monotonic()
        outcome.supernodes = self.wait_for_supernodes(
            expected_supernodes, min(deadline, time.monotonic() + 300)
        )
        online = sum(1 for node in outcome.supernodes if supernode_is_online(node))
        self.progress.line(
            f"{online} of {expected_supernodes} SuperNodes online ({time.monotonic() - looking:.1f} s)"
        )
        if online < expected_supernodes:
            # The ServerApp would only wait for them until its round timeout: fail now, and say why.
            outcome.status = f"not submitted: {online} of {expected_supernodes} SuperNodes online"
            outcome.checks = evaluate_checks(outcome, criteria)
            return outcome
        config = {
            "task": task,
            "strategy": strategy,
            "num-server-rounds": rounds,
            "min-nodes": expected_supernodes,
            **(extra_config or {}),
        }
        outcome.submitted_at = time.time()
        outcome.run_id = self.cli.submit(app_dir, config)
        self.progress.line(
            f"run {outcome.run_id}: {task}/{strategy}, {rounds} rounds, {expected_supernodes} nodes "
            f"(flwr run {time.time() - outcome.submitted_at:.1f} s)"
        )
        self._follow(outcome, deadline, timeout, on_round)
        outcome.finished_at = time.time()
        # The log may trail the status by an upload interval: read it once more. A read that comes back
        # with fewer rounds than were followed (a tunnel connection dropped at that moment: flwr prints
        # nothing) keeps what the last poll read.
        final_log = self.cli.run_log(outcome.run_id)
        start_info, rounds, _ = parse_report_lines(final_log)
        if len(rounds) >= len(outcome.rounds):
            outcome.log, outcome.start_info, outcome.rounds = final_log, start_info, rounds
        if outcome.first_round_finished_at is None and outcome.rounds:
            outcome.first_round_finished_at = outcome.rounds[0].finished
        outcome.checks = evaluate_checks(outcome, criteria)
        return outcome

    def _follow(
        self,
        outcome: FederationOutcome,
        deadline: float,
        timeout: float,
        on_round: Callable[[RoundRecord], None] | None,
    ) -> None:
        """Follow the run until it finished or the deadline passed (then stop it), telling each new round
        as it is reported: through the streamed log where it lasts, by polling otherwise."""
        if self.stream and self._follow_stream(outcome, deadline, timeout, on_round):
            return
        self._poll(outcome, deadline, timeout, on_round)

    def _follow_stream(
        self,
        outcome: FederationOutcome,
        deadline: float,
        timeout: float,
        on_round: Callable[[RoundRecord], None] | None,
    ) -> bool:
        """Read the streamed log every stream_read_interval and the status every status_interval and once
        the stream ended. True: the run was followed to its end (or stopped at the deadline); False: the
        stream ended before the run did, to be followed by polling."""
        assert outcome.run_id is not None
        stream = self.cli.stream_log(outcome.run_id, self.workdir / f"log-stream-{outcome.run_id}.txt")
        next_status = time.monotonic() + self.status_interval
        failed_polls = 0
        try:
            while True:
                ended = stream.ended()  # before the read, so that the read holds all it wrote
                self._take_log(outcome, stream.text(), on_round)
                now = time.monotonic()
                if ended or now >= next_status:
                    next_status = now + self.status_interval
                    try:
                        outcome.status = str(self.cli.run_status(outcome.run_id).get("status", ""))
                        failed_polls = 0
                    except FactoryError as error:
                        failed_polls += 1
                        if failed_polls >= MAX_FAILED_POLLS and not ended:
                            raise FactoryError(
                                f"run {outcome.run_id}: {failed_polls} polls failed in a row: {error}"
                            ) from None
                    if outcome.status.startswith("finished"):
                        return True
                    if ended:
                        detail = stream.errors().splitlines()[-1:] or ["no message"]
                        self.progress.line(
                            f"run {outcome.run_id}: the log stream ended before the run "
                            f"({detail[0][-300:]}): following it by polling"
                        )
                        return False
                if now > deadline:
                    self.cli.stop_run(outcome.run_id)
                    outcome.status = f"timeout after {timeout:.0f} s ({outcome.status})"
                    return True
                time.sleep(self.stream_read_interval)
        finally:
            stream.stop()

    def _poll(
        self,
        outcome: FederationOutcome,
        deadline: float,
        timeout: float,
        on_round: Callable[[RoundRecord], None] | None,
    ) -> None:
        """Poll the run's status and log (two flwr processes) every poll_interval until it finished or the
        deadline passed (then stop it)."""
        assert outcome.run_id is not None
        failed_polls = 0
        while True:
            try:
                status = self.cli.run_status(outcome.run_id)
                log_text = self.cli.run_log(outcome.run_id)
            except FactoryError as error:
                # A dropped tunnel connection or a busy SuperLink: poll again, up to a point.
                failed_polls += 1
                if failed_polls >= MAX_FAILED_POLLS:
                    raise FactoryError(
                        f"run {outcome.run_id}: {failed_polls} polls failed in a row: {error}"
                    ) from None
                time.sleep(self.poll_interval)
                continue
            failed_polls = 0
            outcome.status = str(status.get("status", ""))
            self._take_log(outcome, log_text, on_round)
            if outcome.status.startswith("finished"):
                return
            if time.monotonic() > deadline:
                self.cli.stop_run(outcome.run_id)
                outcome.status = f"timeout after {timeout:.0f} s ({outcome.status})"
                return
            time.sleep(self.poll_interval)

    def _take_log(
        self, outcome: FederationOutcome, log_text: str, on_round: Callable[[RoundRecord], None] | None
    ) -> None:
        """Keep a log read that reports at least the rounds already seen (an empty read, a dropped
        connection, loses nothing) and tell each new round."""
        told = len(outcome.rounds)
        start_info, rounds, _ = parse_report_lines(log_text)
        if len(rounds) >= told:
            outcome.log, outcome.start_info, outcome.rounds = log_text, start_info, rounds
        for record in outcome.rounds[told:]:
            self._tell_round(outcome, record, on_round)

    def _tell_round(
        self, outcome: FederationOutcome, record: RoundRecord, on_round: Callable[[RoundRecord], None] | None
    ) -> None:
        if outcome.first_round_finished_at is None:
            outcome.first_round_finished_at = time.time()
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in record.evaluate_metrics.items() if k != "num-examples")
        self.progress.line(
            f"run {outcome.run_id}: round {record.round}/{outcome.rounds_requested} "
            f"in {record.seconds:.1f} s {metrics}"
        )
        if on_round is not None:
            on_round(record)
