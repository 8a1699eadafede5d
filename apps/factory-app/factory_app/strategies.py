"""Strategy selection from run-config, and the per-round report lines the factory's harness reads."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Message
from flwr.serverapp import strategy as flower_strategies

from factory_app.jobconfig import DPMode, DPSettings

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


# The Flower DP strategy wrapper of each mode (flwr/serverapp/strategy/dp_fixed_clipping.py and
# dp_adaptive_clipping.py); the adaptive ones take the clipping norm as their initial one.
DP_WRAPPERS = {
    DPMode.SERVER_FIXED: flower_strategies.DifferentialPrivacyServerSideFixedClipping,
    DPMode.CLIENT_FIXED: flower_strategies.DifferentialPrivacyClientSideFixedClipping,
    DPMode.SERVER_ADAPTIVE: flower_strategies.DifferentialPrivacyServerSideAdaptiveClipping,
    DPMode.CLIENT_ADAPTIVE: flower_strategies.DifferentialPrivacyClientSideAdaptiveClipping,
}


def _dp_wrapper(dp: DPSettings) -> tuple[type, Callable[[object], dict]]:
    """The Flower DP strategy wrapper for ``dp.mode``, and its keyword arguments around an inner strategy."""
    clipping = "initial_clipping_norm" if dp.mode.adaptive else "clipping_norm"
    return DP_WRAPPERS[dp.mode], lambda inner: {
        "strategy": inner,
        "noise_multiplier": dp.noise_multiplier,
        "num_sampled_clients": dp.sampled_clients,
        clipping: dp.clipping_norm,
    }


def _update_norm(before: list[np.ndarray] | None, after: list[np.ndarray]) -> float | None:
    """L2 norm of the change of the global model in one round (DP noise shows up here)."""
    if before is None or len(before) != len(after):
        return None
    pairs = zip(before, after, strict=True)
    return math.sqrt(sum(float(np.sum((np.asarray(b) - np.asarray(a)) ** 2)) for a, b in pairs))


RoundHook = Callable[[int, list[np.ndarray], dict], dict]


def make_strategy(
    config: dict,
    dp: DPSettings | None = None,
    round_offset: int = 0,
    total_rounds: int | None = None,
    on_round: RoundHook | None = None,
) -> object:
    """The strategy named by run-config ``strategy`` (wrapped for DP when ``dp`` says so), reporting every
    finished round as an FF-ROUND line. ``round_offset``: rounds already done before (a resumed job);
    rounds are reported as offset + Flower's round number. ``on_round(round, arrays, metrics)`` runs after
    each round's evaluation and may add fields to the report (the checkpoint path)."""
    name = str(config["strategy"]).lower()
    if name not in STRATEGIES:
        raise ValueError(
            f"run-config strategy: unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})"
        )
    inner_class, specific = STRATEGIES[name]
    dp = dp if dp is not None else DPSettings(DPMode.OFF, 0.0, 1.0, 1)
    if dp.mode is DPMode.OFF:
        base, arguments = inner_class, {**_common(config), **specific(config)}
    else:
        base, wrap = _dp_wrapper(dp)
        arguments = wrap(inner_class(**_common(config), **specific(config)))

    class Reported(base):  # type: ignore[misc, valid-type]
        """``base`` plus timing and metrics per round, printed when the round's evaluation is aggregated."""

        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            self._ff_round = {"round": round_offset + server_round, "started": time.time()}
            self._ff_before = arrays.to_numpy_ndarrays()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
            replies = list(replies)
            self._ff_round["train_seconds"] = time.time() - self._ff_round["started"]
            self._ff_round["train"] = _reply_summary(replies)
            arrays, metrics = super().aggregate_train(server_round, replies)
            self._ff_round["train_metrics"] = _finite_dict(metrics)
            if arrays is not None:
                self.ff_global = arrays.to_numpy_ndarrays()
                norm = _update_norm(self._ff_before, self.ff_global)
                if norm is not None:
                    self._ff_round["update_norm"] = norm
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
            report["num_rounds"] = total_rounds
            evaluated = report["evaluate_metrics"]
            report["loss"] = evaluated.get("eval_loss")
            report["accuracy"] = evaluated.get("eval_accuracy")
            if dp.mode is not DPMode.OFF:
                report["dp"] = {**dp.to_dict(), "clipping_norm": float(getattr(self, "clipping_norm", 0.0))}
            if on_round is not None and self.ff_global is not None:
                report.update(on_round(report["round"], self.ff_global, evaluated))
            emit("ROUND", report)
            return metrics

    Reported.ff_global = None
    Reported.__name__ = base.__name__
    return Reported(**arguments)
