"""ServerApp: runs the strategy and task named in run-config for num-server-rounds rounds.

Besides Flower's own log it prints one machine-readable line per event, ``FF-<EVENT> {json}`` (see
strategies.emit): START, WAITING (SuperNodes connected so far), RESUME (continuing a job from its
checkpoint), ROUND (one per finished round), END (with the final model's path) and FAIL (with the reason).
The factory's federation runner reads START/ROUND/END from ``flwr log``; the in-guest job runner
(context/appliance/bin/flower-job) reads all of them.

Checkpoints (run-config ``checkpoint-dir``, ``checkpoint-keep``): after every round the global model and
the round number are saved under ``<checkpoint-dir>/<job-id>/`` (checkpoint.py). A run of the same job
(jobconfig.job_identity) finds the newest checkpoint, starts from its model and runs only the remaining
rounds, so that the job ends at num-server-rounds in total. A strategy's own server-side state (FedAdam's
moments, adaptive DP's clipping norm) restarts with the resumed run.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from factory_app.checkpoint import CheckpointStore
from factory_app.jobconfig import JobConfigError, JobSettings, parse
from factory_app.strategies import emit, make_strategy
from factory_app.tasks import load_task

app = ServerApp()


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    reported = -1
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) != reported:
            emit("WAITING", {"nodes": len(nodes), "min_nodes": count})
            reported = len(nodes)
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {count} SuperNodes connected within {timeout:.0f} s")
        time.sleep(1.0)


def _initial_arrays(grid: Grid, config: dict, nodes: list[int]) -> tuple[ArrayRecord, str]:
    """The task's initial model, built here or, when this image lacks the framework, by one SuperNode."""
    try:
        return ArrayRecord(load_task(str(config["task"])).initial_arrays(config)), "serverapp"
    except RuntimeError:
        pass
    request = Message(
        content=RecordDict({"config": ConfigRecord({"task": str(config["task"])})}),
        dst_node_id=nodes[0],
        message_type=MessageType.QUERY,
    )
    replies = list(grid.send_and_receive([request], timeout=float(config["round-timeout"])))
    if not replies or replies[0].has_error():
        reason = replies[0].error.reason if replies else "no reply"
        raise RuntimeError(f"could not get the initial model from node {nodes[0]}: {reason}")
    return replies[0].content.array_records["arrays"], f"node {nodes[0]}"


def _store(settings: JobSettings) -> CheckpointStore | None:
    if not settings.checkpoint_dir:
        return None
    return CheckpointStore(Path(settings.checkpoint_dir), settings.job_id, settings.checkpoint_keep)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    started = time.time()
    try:
        settings = parse(config)
        load_task(str(config.get("task", "")))  # an unknown task fails here, before any node is asked
    except (JobConfigError, ValueError) as error:
        emit("FAIL", {"reason": str(error), "stage": "config"})
        raise
    except RuntimeError:
        pass  # the framework is missing on this side only: a SuperNode builds the initial model
    try:
        _run(grid, config, settings, started)
    except Exception as error:
        emit("FAIL", {"reason": f"{type(error).__name__}: {error}", "stage": "run"})
        raise


def _run(grid: Grid, config: dict, settings: JobSettings, started: float) -> None:
    rounds = settings.rounds
    store = _store(settings)
    checkpoint = store.latest() if store else None
    done = checkpoint.round if checkpoint else 0
    nodes = _wait_for_nodes(grid, settings.min_nodes, settings.round_timeout)
    if checkpoint is not None:
        arrays, initial_from = ArrayRecord(checkpoint.arrays), f"checkpoint {checkpoint.path}"
        emit(
            "RESUME",
            {
                "job": settings.job_id,
                "from_round": done,
                "rounds": rounds,
                "remaining": max(rounds - done, 0),
                "checkpoint": str(checkpoint.path),
                "metrics": checkpoint.meta.get("metrics", {}),
            },
        )
    else:
        arrays, initial_from = _initial_arrays(grid, config, nodes)
    emit(
        "START",
        {
            "task": config["task"],
            "strategy": settings.strategy,
            "rounds": rounds,
            "nodes": nodes,
            "flower": version("flwr"),
            "initial_model_from": initial_from,
            "started": started,
            "job": settings.job_id,
            "resumed_from": done,
            "dp": settings.dp.to_dict(),
            "checkpoint_dir": settings.checkpoint_dir,
        },
    )

    def on_round(server_round: int, model: list, metrics: dict) -> dict:
        if store is None:
            return {}
        return {"checkpoint": str(store.save(server_round, rounds, model, metrics))}

    final = arrays.to_numpy_ndarrays()
    finished_rounds = done
    if done < rounds:
        strategy = make_strategy(
            config, dp=settings.dp, round_offset=done, total_rounds=rounds, on_round=on_round
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=rounds - done,
            timeout=settings.round_timeout,
            train_config=ConfigRecord({"learning-rate": float(config["learning-rate"])}),
        )
        finished_rounds = done + len(result.evaluate_metrics_clientapp)
        if strategy.ff_global is not None:
            final = strategy.ff_global
    model = ""
    if store is not None:
        last = store.latest()
        model = str(store.save_final(rounds, final, last.meta.get("metrics", {}) if last else {}))
    emit(
        "END",
        {
            "rounds": rounds,
            "finished_rounds": finished_rounds,
            "resumed_from": done,
            "seconds": time.time() - started,
            "model": model,
            "job": settings.job_id,
        },
    )
