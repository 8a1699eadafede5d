"""Real Flower federations on loopback: SuperLink + SuperNodes as processes, real TLS, real node auth,
driven by the factory's federation runner through the ``flwr`` CLI, with the factory app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.harness.bareflower import BareFederation, SecurityMode
from factory.harness.federation import FederationRunner
from factory.harness.flwrenv import FlowerEnv


def _run(federation: BareFederation, env: FlowerEnv, workdir: Path, **kwargs) -> object:
    runner = FederationRunner(env, workdir / "runner", federation.connection(), poll_interval=2.0)
    return runner, runner.run(**kwargs)


def test_numpy_app_tls_and_node_auth_with_a_rogue_node(flower_current: FlowerEnv, workdir: Path) -> None:
    """The fast core: 2 authenticated SuperNodes over TLS, 2 FedAvg rounds, loss falls; an unregistered
    SuperNode is refused and the run still finishes."""
    with BareFederation(workdir / "fed", flower_current, num_supernodes=2) as federation:
        assert federation.security is SecurityMode.TLS_AUTH
        rogue = federation.start_rogue_supernode()
        runner, outcome = _run(
            federation, flower_current, workdir, rounds=2, strategy="fedavg", expected_supernodes=2
        )
        assert outcome.passed, (outcome.failures(), outcome.log[-3000:])
        assert [record.round for record in outcome.rounds] == [1, 2]
        losses = [record.evaluate_metrics["eval_loss"] for record in outcome.rounds]
        assert losses[1] < losses[0]
        assert outcome.start_info["flower"] == "1.42.0"
        # the rogue node was refused by the SuperLink: it gave up, and only the 2 registered nodes are online
        rogue.process.wait(timeout=60)
        assert rogue.process.returncode != 0
        assert "2004" in rogue.log_text() or "Failed to activate" in rogue.log_text(), rogue.log_text()[
            -2000:
        ]
        online = [node for node in runner.cli.supernodes() if node["status"] == "online"]
        assert len(online) == 2
        # both registered nodes took part in every round
        for record in outcome.rounds:
            assert record.train_replies == 2 and record.evaluate_replies == 2
        json.dumps(outcome.to_dict())  # the outcome is JSON-serialisable as it goes into results


def test_tls_is_required_for_the_control_api(flower_current: FlowerEnv, workdir: Path) -> None:
    """A CLI that does not trust the SuperLink's CA cannot talk to it (TLS is really on)."""
    from factory.harness.federation import Connection, FlowerCLI
    from factory.harness.tlsmaterial import make_tls
    from hostkit.errors import FactoryError

    other_ca = make_tls(workdir / "other-ca", ["127.0.0.1"]).ca_cert
    with BareFederation(
        workdir / "fed", flower_current, num_supernodes=0, security=SecurityMode.TLS
    ) as federation:
        good = FlowerCLI(flower_current, workdir / "good", federation.connection())
        assert good.supernodes() == []
        wrong = FlowerCLI(flower_current, workdir / "wrong", Connection(federation.address, other_ca))
        with pytest.raises(FactoryError):
            wrong.supernodes()
        plain = FlowerCLI(flower_current, workdir / "plain", Connection(federation.address, None))
        with pytest.raises(FactoryError):
            plain.supernodes()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "krum", "fedmedian"])
def test_strategies_on_numpy(strategy: str, flower_current: FlowerEnv, workdir: Path) -> None:
    with BareFederation(workdir / "fed", flower_current, num_supernodes=2) as federation:
        _, outcome = _run(
            federation, flower_current, workdir, rounds=3, strategy=strategy, expected_supernodes=2
        )
    assert outcome.passed, outcome.failures()


@pytest.mark.slow
@pytest.mark.parametrize("security", [SecurityMode.TLS, SecurityMode.INSECURE])
def test_security_modes(security: SecurityMode, flower_current: FlowerEnv, workdir: Path) -> None:
    with BareFederation(workdir / "fed", flower_current, num_supernodes=2, security=security) as federation:
        _, outcome = _run(federation, flower_current, workdir, rounds=2, expected_supernodes=2)
    assert outcome.passed, outcome.failures()


@pytest.mark.slow
def test_cross_version_pair(flower_current: FlowerEnv, flower_previous: FlowerEnv, workdir: Path) -> None:
    """1.42.0 SuperLink with 1.41.0 SuperNodes (and the CLI of the SuperLink's version)."""
    with BareFederation(workdir / "fed", flower_current, supernode_env=flower_previous) as federation:
        _, outcome = _run(federation, flower_current, workdir, rounds=2, expected_supernodes=2)
    assert outcome.passed, outcome.failures()
