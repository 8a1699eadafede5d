"""ServerApp: runs the strategy and task named in run-config for num-server-rounds rounds.

Besides Flower's own log it prints FF-START, one FF-ROUND per finished round and FF-END (see strategies.py):
the factory's federation runner reads these from ``flwr log``.
"""

from __future__ import annotations

import time
from importlib.metadata import version

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from factory_app.strategies import emit, make_strategy
from factory_app.tasks import load_task

app = ServerApp()


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
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


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    rounds = int(config["num-server-rounds"])
    strategy = make_strategy(config)
    started = time.time()
    nodes = _wait_for_nodes(grid, int(config["min-nodes"]), float(config["round-timeout"]))
    arrays, initial_from = _initial_arrays(grid, config, nodes)
    emit(
        "START",
        {
            "task": config["task"],
            "strategy": config["strategy"],
            "rounds": rounds,
            "nodes": nodes,
            "flower": version("flwr"),
            "initial_model_from": initial_from,
            "started": started,
        },
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=rounds,
        timeout=float(config["round-timeout"]),
        train_config=ConfigRecord({"learning-rate": float(config["learning-rate"])}),
    )
    emit(
        "END",
        {
            "rounds": rounds,
            "finished_rounds": len(result.evaluate_metrics_clientapp),
            "seconds": time.time() - started,
        },
    )
