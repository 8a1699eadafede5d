"""ClientApp: trains and evaluates the selected task on this node's partition."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from factory_app.tasks import load_task

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    """This node's (partition-id, num-partitions) from its node config; a clear error when missing."""
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as missing:
        raise ValueError(
            f"node config lacks {missing}: start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"node config: partition-id {partition_id} is outside 0..{num_partitions - 1}")
    return partition_id, num_partitions


def _settings(msg: Message, context: Context) -> dict:
    """Run-config overlaid with what the strategy sent. The proximal term applies only when the strategy
    (FedProx) sends ``proximal-mu``: the run-config value is the strategy's setting, not the client's."""
    settings = {key: value for key, value in context.run_config.items() if key != "proximal-mu"}
    if "config" in msg.content.config_records:
        settings.update(dict(msg.content.config_records["config"]))
    return settings


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = _settings(msg, context)
    task = load_task(str(settings["task"]))
    partition_id, num_partitions = _partition(context)
    train_data, _ = task.load_data(partition_id, num_partitions, settings)
    received = msg.content.array_records["arrays"].to_numpy_ndarrays()
    arrays, examples, metrics = task.train(received, train_data, settings, received)
    reply = RecordDict(
        {
            "arrays": ArrayRecord(arrays),
            "metrics": MetricRecord({**metrics, "num-examples": examples}),
        }
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = _settings(msg, context)
    task = load_task(str(settings["task"]))
    partition_id, num_partitions = _partition(context)
    _, test_data = task.load_data(partition_id, num_partitions, settings)
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    examples, metrics = task.evaluate(arrays, test_data, settings)
    reply = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": examples})})
    return Message(content=reply, reply_to=msg)


@app.query()
def initial_model(msg: Message, context: Context) -> Message:
    """The task's initial model, for a SuperLink image that lacks the task's framework."""
    settings = _settings(msg, context)
    arrays = load_task(str(settings["task"])).initial_arrays(settings)
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)
