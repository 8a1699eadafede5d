"""Fast checks of the pieces around the federation: report-line parsing and the pass/fail rules, the
OpenNebula settings and XML templates, insecure-mode opt-in."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from lxml import etree

from factory.harness.bareflower import SecurityMode
from factory.harness.federation import (
    Connection,
    FederationOutcome,
    TaskCriteria,
    evaluate_checks,
    load_task_criteria,
    parse_report_lines,
)
from factory.harness.pair import PairSpec, Side
from factory.harness.pairtest import (
    PairTestOptions,
    ca_from_published,
    error_lines,
    version_warnings,
)
from factory.one import xmltemplate
from factory.one.flow import service_body, state_name
from factory.one.settings import load_settings
from hostkit.errors import ConfigError


def _line(kind: str, payload: dict) -> str:
    return f"\x1b[92mINFO \x1b[0m: FF-{kind} {json.dumps(payload)}\n"


def _round(number: int, loss: float, replies: int = 2, errors: tuple = (), r2: float | None = None) -> str:
    summary = {"replies": replies, "errors": list(errors), "nodes": [1, 2][:replies]}
    return _line(
        "ROUND",
        {
            "round": number, "seconds": 13.2, "train_seconds": 7.0, "evaluate_seconds": 6.2,
            "finished": 1.0 + number,
            "train": summary, "evaluate": summary, "train_metrics": {"train_loss": loss},
            "evaluate_metrics": {"eval_loss": loss, "eval_r2": 1.0 - loss / 10 if r2 is None else r2,
                                 "num-examples": 64.0},
        },
    )  # fmt: skip


def _outcome(
    log: str, status: str = "finished:completed", rounds: int = 3, online: int = 2
) -> FederationOutcome:
    outcome = FederationOutcome(app="factory-app", task="numpy", strategy="fedavg", rounds_requested=rounds,
                                expected_supernodes=2, status=status)  # fmt: skip
    outcome.supernodes = [{"node-id": str(n), "status": "online"} for n in range(online)]
    outcome.start_info, outcome.rounds, _ = parse_report_lines(log)
    return outcome


NUMPY = TaskCriteria("numpy", "eval_r2", 0.95, True, "test")


def _failed(outcome: FederationOutcome, criteria: TaskCriteria | None = NUMPY) -> set[str]:
    return {check.name for check in evaluate_checks(outcome, criteria) if not check.passed}


GOOD = _line("START", {"task": "numpy"}) + _round(1, 1.5) + "noise\n" + _round(2, 0.3) + _round(3, 0.05)


def test_a_good_run_passes_every_check() -> None:
    outcome = _outcome(GOOD)
    assert [record.round for record in outcome.rounds] == [1, 2, 3]
    assert outcome.start_info == {"task": "numpy"}
    assert _failed(outcome) == set()


@pytest.mark.parametrize(
    ("log", "kwargs", "failing"),
    [
        (GOOD, {"status": "finished:failed"}, {"run_completed"}),
        (GOOD, {"online": 1}, {"supernodes_online"}),
        (_round(1, 1.5) + _round(2, 0.3), {}, {"all_rounds_finished"}),
        (_round(1, 1.5) + _round(2, 0.3, replies=1) + _round(3, 0.1), {}, {"every_node_every_round"}),
        (_round(1, 1.5) + _round(2, 0.3, errors=("0: ClientApp crashed",)) + _round(3, 0.1), {},
         {"every_node_every_round"}),
        (_round(1, 1.5) + _round(2, math.nan) + _round(3, 0.1), {}, {"metrics_finite", "loss_decreasing"}),
        (_round(1, 1.5) + _round(2, 1.7) + _round(3, 0.1), {}, {"loss_decreasing"}),
        (_round(1, 1.5) + _round(2, 0.3) + _round(3, 0.05, r2=0.9), {}, {"metric_floor"}),
        (_round(1, 1.5, r2=0.99) + _round(2, 0.3, r2=0.99) + _round(3, 0.05, r2=0.2), {}, {"metric_floor"}),
        ("", {}, {"all_rounds_finished", "every_node_every_round", "metrics_finite", "loss_decreasing",
                  "metric_floor"}),
    ],
)  # fmt: skip
def test_each_check_can_fail(log: str, kwargs: dict, failing: set[str]) -> None:
    assert _failed(_outcome(log, **kwargs)) == failing


def test_the_floor_is_held_against_the_final_round_and_named_in_the_detail() -> None:
    log = _round(1, 1.5) + _round(2, 0.3) + _round(3, 0.05, r2=0.94)
    floor = next(check for check in evaluate_checks(_outcome(log), NUMPY) if check.name == "metric_floor")
    assert not floor.passed and floor.detail == "final eval_r2 0.94 below floor 0.95 (round 3)"
    # a task whose metric was never reported cannot clear its floor
    missing = TaskCriteria("sklearn", "eval_accuracy", 0.85, True, "test")
    assert _failed(_outcome(GOOD), missing) == {"metric_floor"}
    # a strategy the floor was not measured for: no made-up floor, but the value must exist and be finite
    fedadam = _outcome(log)
    fedadam.strategy = "fedadam"
    floor = next(check for check in evaluate_checks(fedadam, NUMPY) if check.name == "metric_floor")
    assert floor.passed and "no floor stated for strategy fedadam (floors hold for fedavg)" in floor.detail
    nan_final = _outcome(_round(1, 1.5) + _round(2, 0.3) + _round(3, 0.05, r2=math.nan))
    nan_final.strategy = "fedadam"
    assert "metric_floor" in _failed(nan_final)
    # without criteria only the generic checks apply
    assert _failed(_outcome(_round(1, 1.5) + _round(2, 1.7) + _round(3, 1.9)), None) == set()


def test_every_framework_of_the_matrix_has_criteria_with_a_reason() -> None:
    from factory.model.matrix import load_matrix

    criteria = load_task_criteria()
    assert set(load_matrix().axes["framework"]) <= set(criteria)
    for item in criteria.values():
        assert item.metric.startswith("eval_") and 0.0 < item.floor <= 1.0 and item.loss_must_decrease
        assert "fedavg" in item.strategies and "fedadam" not in item.strategies
        assert "Measured" in item.why


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[numpy]\nmetric = 'eval_r2'\nwhy = 'x'\n", "numpy.floor"),
        ("[numpy]\nmetric = 'eval_r2'\nfloor = 'high'\nwhy = 'x'\n", "numpy.floor"),
        ("[numpy]\nfloor = 0.9\nwhy = 'x'\n", "numpy.metric"),
        ("[numpy]\nmetric = 'eval_r2'\nfloor = 0.9\n", "numpy.why"),
        ("[numpy]\nmetric = 'eval_r2'\nfloor = 0.9\nwhy = 'x'\nflor = 1\n", "numpy.flor"),
        ("[numpy]\nmetric = 'eval_r2'\nfloor = 0.9\nwhy = 'x'\nloss_must_decrease = 'yes'\n",
         "numpy.loss_must_decrease"),
        ("[numpy]\nmetric = 'eval_r2'\nfloor = 0.9\nwhy = 'x'\nstrategies = ['fedavg', 'sgd']\n",
         "numpy.strategies"),
        ("numpy = 3\n", "numpy"),
        ("[numpy\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_bad_task_checks_name_the_file_and_field(text: str, field: str, tmp_path: Path) -> None:
    path = tmp_path / "task-checks.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {field}")):
        load_task_criteria(path)


def test_an_unknown_task_has_no_criteria_and_says_where_they_live(tmp_path: Path) -> None:
    from factory.harness.federation import task_criteria
    from hostkit.errors import FactoryError

    with pytest.raises(FactoryError, match=r"'jax' has no pass criteria in .*task-checks\.toml"):
        task_criteria("jax")


def test_connection_config_is_what_the_flwr_cli_reads(tmp_path: Path) -> None:
    secure = Connection("127.0.0.1:9093", tmp_path / "ca.crt").config_toml()
    assert 'default = "factory"' in secure and f'root-certificates = "{tmp_path / "ca.crt"}"' in secure
    assert "insecure = true" in Connection("127.0.0.1:9093", None).config_toml()


def test_insecure_needs_an_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="--allow-insecure"):
        PairTestOptions(security=SecurityMode.INSECURE).check()
    PairTestOptions(security=SecurityMode.INSECURE, allow_insecure=True).check()
    assert PairTestOptions().security is SecurityMode.TLS_AUTH


def test_version_warnings_follow_flowers_major_minor_rule() -> None:
    def spec(link: str, node: str) -> PairSpec:
        return PairSpec("p", Side(variant="l", flower=link), Side(variant="n", flower=node))

    assert version_warnings(spec("1.42.0", "1.42.0")) == []
    assert version_warnings(spec("1.42.0", "1.42.1")) == []
    assert "major.minor" in version_warnings(spec("1.42.0", "1.41.0"))[0]


def test_error_lines_pick_the_reason_out_of_logs() -> None:
    logs = {
        "supernode-0": "INFO starting\nERROR [code: 2004] Failed to activate SuperNode.\nExit Code: 305\n"
    }
    found = error_lines(logs)
    assert any("2004" in line for line in found) and all(line.startswith("supernode-0:") for line in found)


def test_published_ca_is_checked_against_its_fingerprint(tmp_path: Path) -> None:
    import base64
    import subprocess

    from factory.harness.tlsmaterial import make_tls
    from hostkit.errors import FactoryError

    tls = make_tls(tmp_path / "tls", ["10.231.64.5"])
    pem = tls.ca_cert.read_bytes()
    fingerprint = subprocess.run(
        ["openssl", "x509", "-in", str(tls.ca_cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=", 1)[1]  # fmt: skip
    published = {"ONEAPP_FL_CA_CERT": base64.b64encode(pem).decode(), "ONEAPP_FL_CA_FINGERPRINT": fingerprint}
    assert ca_from_published(published) == pem
    with pytest.raises(FactoryError, match="fingerprint mismatch"):
        ca_from_published({**published, "ONEAPP_FL_CA_FINGERPRINT": "AB:" * 31 + "CD"})
    with pytest.raises(FactoryError, match="no ONEAPP_FL_CA_CERT"):
        ca_from_published({})


def test_xml_templates_keep_every_value_intact() -> None:
    awkward = 'a "quoted" value with ]]> and <tags> & base64+/= \n second line'
    text = xmltemplate.render(
        {
            "NAME": "x",
            "CONTEXT": {"NETWORK": "YES", "ONEAPP_X": awkward},
            "NIC": [{"NETWORK_ID": 0}, {"NETWORK_ID": 1}],
        }
    )
    root = etree.fromstring(text.encode())
    assert root.findtext("CONTEXT/ONEAPP_X") == awkward
    assert [nic.findtext("NETWORK_ID") for nic in root.findall("NIC")] == ["0", "1"]
    with pytest.raises(ValueError, match="not valid"):
        xmltemplate.render({"BAD NAME": "x"})


def test_settings_from_the_environment_and_from_the_test_cloud(tmp_path: Path) -> None:
    env = {
        "ONE_XMLRPC": "https://one.example:2633/RPC2",
        "ONE_AUTH": "oneadmin:secret",
        "ONEFLOW_URL": "http://f:2474/",
    }
    settings = load_settings(env, cloud_dir=tmp_path)
    assert (settings.user, settings.password, settings.oneflow) == ("oneadmin", "secret", "http://f:2474")
    assert "secret" not in settings.describe()
    auth_file = tmp_path / "one_auth"
    auth_file.write_text("alice:pw\n")
    assert load_settings({**env, "ONE_AUTH": str(auth_file)}, cloud_dir=tmp_path).user == "alice"
    (tmp_path / "endpoints.json").write_text(
        json.dumps(
            {"xmlrpc": "http://127.0.0.1:1/RPC2", "oneflow": "http://127.0.0.1:2", "auth": "oneadmin:x"}
        )
    )
    local = load_settings({}, cloud_dir=tmp_path)
    assert local.xmlrpc == "http://127.0.0.1:1/RPC2" and local.source.endswith("endpoints.json")


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({}, "ONE_XMLRPC"),
        ({"ONE_XMLRPC": "localhost:2633", "ONE_AUTH": "a:b", "ONEFLOW_URL": "http://f"}, "ONE_XMLRPC"),
        ({"ONE_XMLRPC": "http://h/RPC2", "ONE_AUTH": "nocolon", "ONEFLOW_URL": "http://f"}, "ONE_AUTH"),
        ({"ONE_XMLRPC": "http://h/RPC2", "ONE_AUTH": "a:b", "ONEFLOW_URL": "ftp://f"}, "ONEFLOW_URL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict, field: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(env, cloud_dir=tmp_path / "none")


def test_oneflow_documents() -> None:
    assert service_body({"TEMPLATE": {"BODY": '{"state": 2, "roles": []}'}}) == {"state": 2, "roles": []}
    assert service_body({"TEMPLATE": {"BODY": {"state": 7}}})["state"] == 7
    assert (state_name(2), state_name("7"), state_name(99)) == ("RUNNING", "FAILED_DEPLOYING", "UNKNOWN(99)")
