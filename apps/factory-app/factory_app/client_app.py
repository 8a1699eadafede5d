"""ClientApp: trains and evaluates the selected task on this node's partition."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from factory_app.tasks import load_task

# Client-side DP clipping (flwr/clientapp/mod/centraldp_mods.py), applied when the run-config's ``dp``
# names a client-side mode: the ServerApp wraps its strategy with the matching
# DifferentialPrivacyClientSide* wrapper from the same run-config, so both sides agree by construction.
CLIENT_DP_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def privacy_mod(msg: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
    mode = str(context.run_config.get("dp", "off")).strip().lower()
    if msg.metadata.message_type == MessageType.TRAIN and mode in CLIENT_DP_MODS:
        return CLIENT_DP_MODS[mode](msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[privacy_mod])


def _partition(context: Context) -> tuple[int, int]:
    """This node's (partition-id, num-partitions) from its node config; a clear error when missing. A node
    with its own data (node config ``data-path``) trains on all of it: partition 0 of 1."""
    if str(context.node_config.get("data-path", "") or "").strip():
        return 0, 1
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
    # The node's own data (documented per task in the app README), never sent anywhere.
    settings["data-path"] = str(context.node_config.get("data-path", "") or "").strip()
    return settings


def _round(msg: Message, context: Context) -> tuple[ModuleType, dict, tuple, list[np.ndarray]]:
    """What a train or evaluate round starts from: the task, its settings, this node's (train, test)
    data and the arrays the server sent."""
    settings = _settings(msg, context)
    task = load_task(str(settings["task"]))
    partition_id, num_partitions = _partition(context)
    data = task.load_data(partition_id, num_partitions, settings)
    return task, settings, data, msg.content.array_records["arrays"].to_numpy_ndarrays()


@app.train()
def train(msg: Message, context: Context) -> Message:
    task, settings, (train_data, _), received = _round(msg, context)
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
    task, settings, (_, test_data), arrays = _round(msg, context)
    examples, metrics = task.evaluate(arrays, test_data, settings)
    reply = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": examples})})
    return Message(content=reply, reply_to=msg)


@app.query()
def initial_model(msg: Message, context: Context) -> Message:
    """The task's initial model, for a SuperLink image that lacks the task's framework."""
    settings = _settings(msg, context)
    arrays = load_task(str(settings["task"])).initial_arrays(settings)
    return Message(content=RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)
