"""A full appliance pair in the local test cloud: the images built here, a OneFlow service (1 SuperLink +
2 SuperNodes booted as containers), real federation rounds over TLS with SuperNode authentication through
an SSH tunnel (the numpy canary, then the task of the SuperNode image's framework: numpy on edge images,
sklearn on sklearn images), the result recorded, then published to the test cloud's http marketplace.

Needs root, systemd-nspawn and the test bridge (marker ``cloud``). The heavier variants (the security-mode
matrix, a rogue SuperNode, cross-version pairs) are ``slow``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scratch import scratch_dir

from factory.harness.bareflower import SecurityMode
from factory.harness.campaign import find_pair_specs, local_image
from factory.harness.pair import PASSED, PASSED_WITH_WARNING
from factory.harness.pairtest import PairTestOptions, run_pair_in_cloud
from factory.one import OneCloud, load_settings
from factory.release.results import write_result
from hostkit.progress import Progress

pytestmark = pytest.mark.cloud

PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-edge-numpy"
SKLEARN_PAIR = "pair-sl1.42.0-sn1.42.0-debian12-cpu-standard-sklearn"
CROSS = "pair-sl1.42.0-sn1.41.0-debian12-cpu-edge-numpy"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneCloud]:
    from testcloud.launcher import start

    with scratch_dir(tmp_path_factory, "cloud") as state, start(state, "auto") as handle:
        settings = load_settings(environ={}, cloud_dir=state)
        assert handle.endpoints["xmlrpc"] == settings.xmlrpc
        yield OneCloud(settings, Progress())


def _images(pair: str) -> dict:
    spec = find_pair_specs([pair])[0]
    return spec, {
        "superlink": local_image(spec.superlink.variant),
        "supernode": local_image(spec.supernode.variant),
    }


def test_a_full_pair_with_real_rounds(cloud: OneCloud, tmp_path: Path) -> None:
    spec, images = _images(PAIR)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", PairTestOptions(rounds=2), cloud, images)
    assert result.status == PASSED, (result.error, json.dumps(result.logs, indent=1)[-6000:])
    # an edge image's framework is numpy: the canary is its framework task, run once
    assert result.framework_task == "numpy" and [f["task"] for f in result.federations] == ["numpy"]
    assert result.axes["profile"] == "edge" and result.superlink.profile == "standard"
    numpy_run = result.federations[0]
    assert [record["round"] for record in numpy_run["rounds"]] == [1, 2]
    assert numpy_run["rounds"][-1]["evaluate_metrics"]["eval_r2"] >= numpy_run["floor"]
    assert all(check["passed"] for check in result.checks)
    assert len([node for node in numpy_run["supernodes"] if node["status"] == "online"]) == 2
    assert result.timings["instantiate_to_first_round_seconds"] > result.timings["deploy_seconds"]
    # the pair's image files are recorded for publishing, with the checksums of the tested files
    assert result.superlink.image["sha256"] == images["superlink"].manifest["sha256"]
    # nothing is left behind in the cloud
    pool = cloud.one.vmpool.info(-2, -1, -1, -1)
    assert not [vm for vm in (pool.VM or []) if "edge-numpy" in vm.NAME]
    # and it publishes: marketplace apps through the API
    from factory.release.publish import publish

    root = tmp_path / "results"
    write_result(result, root)
    publication = publish("ci", cloud, results_root=root)
    assert {app["type"] for app in publication.apps} == {"IMAGE", "SERVICE_TEMPLATE"}
    for app in publication.apps:
        assert int(cloud.marketapp_info(app["id"]).STATE) == 1  # READY


def test_a_sklearn_pair_runs_sklearn_on_its_supernodes(cloud: OneCloud, tmp_path: Path) -> None:
    """The sklearn images run the sklearn task (after the numpy canary), and clear its floor."""
    spec, images = _images(SKLEARN_PAIR)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", PairTestOptions(rounds=3), cloud, images)
    assert result.status == PASSED, (result.error, json.dumps(result.logs, indent=1)[-6000:])
    assert result.framework_task == "sklearn"
    assert [federation["task"] for federation in result.federations] == ["numpy", "sklearn"]
    sklearn_run = result.framework_federation()
    assert sklearn_run is not None and [record["round"] for record in sklearn_run["rounds"]] == [1, 2, 3]
    accuracy = [record["evaluate_metrics"]["eval_accuracy"] for record in sklearn_run["rounds"]]
    assert accuracy[-1] >= sklearn_run["floor"] == 0.85, accuracy
    assert {check["name"] for check in result.checks if check["task"] == "sklearn"} >= {
        "loss_decreasing",
        "metric_floor",
        "every_node_every_round",
    }


@pytest.mark.slow
@pytest.mark.parametrize("security", [SecurityMode.TLS, SecurityMode.INSECURE])
def test_security_modes_in_the_cloud(security: SecurityMode, cloud: OneCloud, tmp_path: Path) -> None:
    spec, images = _images(PAIR)
    options = PairTestOptions(rounds=2, security=security, allow_insecure=True)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", options, cloud, images)
    assert result.status == PASSED, result.error


@pytest.mark.slow
def test_a_rogue_supernode_is_refused_and_the_run_finishes(cloud: OneCloud, tmp_path: Path) -> None:
    spec, images = _images(PAIR)
    options = PairTestOptions(rounds=2, rogue_supernode=True)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", options, cloud, images)
    assert result.status == PASSED, result.error
    rogue = next(check for check in result.checks if check["name"] == "rogue_supernode_rejected")
    assert rogue["passed"], rogue


@pytest.mark.slow
def test_cross_version_pair_is_recorded_as_it_behaves(cloud: OneCloud, tmp_path: Path) -> None:
    spec, images = _images(CROSS)
    result = run_pair_in_cloud(spec, "ci", tmp_path / "work", PairTestOptions(rounds=2), cloud, images)
    # 1.42 SuperLink with 1.41 SuperNodes: Flower's rule says mismatch, the wire protocol works (flower.md)
    assert result.status == PASSED_WITH_WARNING, result.error
    assert any("major.minor" in warning for warning in result.warnings)
