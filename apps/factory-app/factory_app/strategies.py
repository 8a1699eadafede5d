"""Strategy selection from run-config, and the per-round report lines the factory's harness reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import strategy as flower_strategies

REPORT_PREFIX = "FF-"


def emit(event: str, payload: dict) -> None:
    """One machine-readable line in the run log (ServerApp stdout goes to ``flwr log``)."""
    print(f"{REPORT_PREFIX}{event} {json.dumps(payload, sort_keys=True)}", flush=True)


def _common(config: dict) -> dict:
    nodes = int(config["min-nodes"])
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": nodes,
        "min_evaluate_nodes": nodes,
        "min_available_nodes": nodes,
    }


def _fedadam(config: dict) -> dict:
    return {"eta": float(config["server-learning-rate"]), "eta_l": float(config["learning-rate"])}


STRATEGIES: dict[str, tuple[type, Callable[[dict], dict]]] = {
    "fedavg": (flower_strategies.FedAvg, lambda config: {}),
    "fedprox": (flower_strategies.FedProx, lambda config: {"proximal_mu": float(config["proximal-mu"])}),
    "fedadam": (flower_strategies.FedAdam, _fedadam),
    "fedmedian": (flower_strategies.FedMedian, lambda config: {}),
    "krum": (
        flower_strategies.Krum,
        lambda config: {"num_malicious_nodes": int(config["num-malicious-nodes"])},
    ),
    "multikrum": (
        flower_strategies.MultiKrum,
        lambda config: {
            "num_malicious_nodes": int(config["num-malicious-nodes"]),
            "num_nodes_to_select": max(1, int(config["min-nodes"]) - int(config["num-malicious-nodes"])),
        },
    ),
    "fedtrimmedavg": (flower_strategies.FedTrimmedAvg, lambda config: {}),
}


def _finite_dict(record: object) -> dict:
    values = dict(record) if record is not None else {}
    return {key: (float(value) if isinstance(value, int | float) else value) for key, value in values.items()}


def _reply_summary(replies: list[Message]) -> dict:
    errors = [reply for reply in replies if reply.has_error()]
    return {
        "replies": len(replies),
        "errors": [f"{reply.error.code}: {reply.error.reason}" for reply in errors],
        "nodes": sorted(reply.metadata.src_node_id for reply in replies if not reply.has_error()),
    }


def make_strategy(config: dict) -> object:
    """The strategy named by run-config ``strategy``, reporting every finished round as an FF-ROUND line."""
    name = str(config["strategy"]).lower()
    if name not in STRATEGIES:
        raise ValueError(
            f"run-config strategy: unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})"
        )
    base, specific = STRATEGIES[name]

    class Reported(base):  # type: ignore[misc, valid-type]
        """``base`` plus timing and metrics per round, printed when the round's evaluation is aggregated."""

        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            self._ff_round = {"round": server_round, "started": time.time()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
            replies = list(replies)
            self._ff_round["train_seconds"] = time.time() - self._ff_round["started"]
            self._ff_round["train"] = _reply_summary(replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            self._ff_round["train_metrics"] = _finite_dict(metrics)
            self._ff_round["evaluate_started"] = time.time()
            return arrays, metrics

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
            replies = list(replies)
            metrics = super().aggregate_evaluate(server_round, replies)
            finished = time.time()
            report = self._ff_round
            report["evaluate_seconds"] = finished - report.pop("evaluate_started")
            report["seconds"] = finished - report["started"]
            report["finished"] = finished
            report["evaluate"] = _reply_summary(replies)
            report["evaluate_metrics"] = _finite_dict(metrics)
            emit("ROUND", report)
            return metrics

    Reported.__name__ = base.__name__
    return Reported(**_common(config), **specific(config))
