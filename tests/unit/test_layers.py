"""Layer plans of the local builder (which steps, which variables, which key) and the timings record.
No build: these run in milliseconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factory.images import layers
from factory.images.layers import LayerName, plan_layers, split_steps
from factory.images.timings import BuildTimings, EntryKind, Outcome, write_section
from factory.model.matrix import load_matrix
from hostkit.errors import FactoryError
from hostkit.paths import PROVISION_DIR

BASE_KEY = "b" * 64
PACKAGE = ("c" * 40, "d1", "7.0.0-1")


def _environment(name: str) -> dict[str, str]:
    return load_matrix().variant(name).provision_env(payload="/run/fl-payload", build_target="chroot")


def _variant_name(role: str, version: str, profile: str, framework: str) -> str:
    return f"{role}-{version}-debian12-cpu-{profile}-{framework}-x86_64"


def _plan(name: str, provision: Path = PROVISION_DIR) -> tuple[layers.Layer, ...]:
    return plan_layers(_environment(name), BASE_KEY, provision, PACKAGE, "1")


@pytest.fixture
def provision(tmp_path: Path) -> Path:
    copy = tmp_path / "provision"
    shutil.copytree(PROVISION_DIR, copy)
    return copy


def test_steps_are_split_in_order_into_system_runtime_and_role() -> None:
    steps = split_steps(layers.provisioning_steps(PROVISION_DIR))
    names = {layer: [step.name[:2] for step in steps[layer]] for layer in LayerName}
    assert names[LayerName.SYSTEM] == ["10", "20", "30"]
    assert names[LayerName.RUNTIME] == ["40"]
    assert names[LayerName.ROLE][0] == "50" and names[LayerName.ROLE] == sorted(names[LayerName.ROLE])
    everything = [step.name for layer in LayerName for step in steps[layer]]
    assert everything == sorted(path.name for path in PROVISION_DIR.glob("[0-9][0-9]-*.sh"))


def test_a_layer_sees_only_the_variables_its_scripts_name() -> None:
    system, runtime = _plan(_variant_name("supernode", "1.42.0", "edge", "numpy"))
    assert "FL_PROFILE" not in system.environment and "FL_VARIANT" not in system.environment
    assert "FL_FLOWER_VERSION" not in system.environment
    assert runtime.environment["FL_FLOWER_VERSION"] == "1.42.0"
    assert "FL_FRAMEWORK_PACKAGES" in runtime.environment and "FL_ROLE" not in runtime.environment
    assert runtime.parent_key == system.key and system.parent_key == BASE_KEY
    assert layers.referenced_environment({"FL_A": "1", "FL_AB": "2"}, ['echo "${FL_AB}"']) == {"FL_AB": "2"}


def test_variants_share_a_layer_exactly_when_its_inputs_agree() -> None:
    numpy_edge = _plan(_variant_name("supernode", "1.42.0", "edge", "numpy"))
    sklearn = _plan(_variant_name("supernode", "1.41.0", "standard", "sklearn"))
    superlink = _plan(_variant_name("superlink", "1.42.0", "standard", "numpy"))
    # one system layer for every variant of the OS; one venv per Flower version and framework, for both roles
    assert numpy_edge[0].key == sklearn[0].key == superlink[0].key
    assert numpy_edge[1].key != sklearn[1].key
    assert numpy_edge[1].key == superlink[1].key


def test_a_script_below_the_role_layer_that_names_the_role_splits_its_layer_by_role(provision: Path) -> None:
    script = provision / "10-base.sh"
    script.write_text(script.read_text() + 'echo "${FL_ROLE:?}"\n')
    supernode = _plan(_variant_name("supernode", "1.42.0", "edge", "numpy"), provision)
    superlink = _plan(_variant_name("superlink", "1.42.0", "standard", "numpy"), provision)
    assert supernode[0].key != superlink[0].key and supernode[1].key != superlink[1].key


def test_every_input_of_a_layer_changes_its_key_and_its_children(provision: Path) -> None:
    name = _variant_name("supernode", "1.42.0", "edge", "numpy")
    system, runtime = _plan(name, provision)
    environment = _environment(name)
    changed = [
        plan_layers(environment, "0" * 64, provision, PACKAGE, "1"),
        plan_layers(environment, BASE_KEY, provision, ("e" * 40, "d1", "7.0.0-1"), "1"),
        plan_layers(environment, BASE_KEY, provision, PACKAGE, "2"),
        plan_layers(environment | {"FL_ONE_CONTEXT": "package"}, BASE_KEY, provision, PACKAGE, "1"),
    ]
    for other in changed:
        assert other[0].key != system.key and other[1].key != runtime.key
    (provision / "lib" / "distro.sh").write_text((provision / "lib" / "distro.sh").read_text() + "# x\n")
    assert _plan(name, provision)[0].key != system.key
    shutil.copytree(PROVISION_DIR / "lib", provision / "lib", dirs_exist_ok=True)
    assert _plan(name, provision)[0].key == system.key
    flower = provision / "40-flower.sh"
    flower.write_text(flower.read_text() + "# changed\n")
    again = _plan(name, provision)
    assert again[0].key == system.key and again[1].key != runtime.key
    # a role-layer script is not an input of the intermediate layers
    (provision / "50-appliance.sh").write_text("# changed\n")
    assert _plan(name, provision)[1].key == again[1].key


def test_timings_record_sums_prints_and_merges_into_a_json_section(tmp_path: Path) -> None:
    timings = BuildTimings()
    timings.record(EntryKind.BASE, "debian12", "", "k0" * 32, True, 0.01)
    timings.record(EntryKind.LAYER, "system", "v1", "k1" * 32, False, 80.0)
    timings.record(EntryKind.IMAGE, "v1", "v1", "k2" * 32, False, 120.0)
    timings.record(EntryKind.IMAGE, "v2", "v2", "k3" * 32, True, 0.5)
    assert timings.seen(EntryKind.BASE, "k0" * 32) and not timings.seen(EntryKind.IMAGE, "k0" * 32)
    assert timings.seen(EntryKind.LAYER, "k1" * 32, Outcome.BUILT)
    assert not timings.seen(EntryKind.BASE, "k0" * 32, Outcome.BUILT)
    assert timings.seconds(Outcome.BUILT) == 200.0 and timings.seconds(Outcome.REUSED) == 0.51
    text = timings.breakdown()
    assert "system layer for v1" in text and "2 built (200.0 s), 2 reused (0.5 s)" in text
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"test": {"seconds": 3}}))
    write_section(path, timings)
    document = json.loads(path.read_text())
    assert document["test"] == {"seconds": 3}
    images = document["images"]
    assert images["built_seconds"] == 200.0 and len(images["entries"]) == 4
    assert images["entries"][1] == {
        "kind": "layer",
        "name": "system",
        "variant": "v1",
        "key": "k1" * 32,
        "outcome": "built",
        "seconds": 80.0,
    }


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_a_timings_file_that_is_not_a_json_object_is_refused_untouched(tmp_path: Path, content: str) -> None:
    path = tmp_path / "timings.json"
    path.write_text(content)
    with pytest.raises(FactoryError, match=r"timings\.json"):
        write_section(path, BuildTimings())
    assert path.read_text() == content


def test_layers_are_built_once_and_reused_and_force_rebuilds_each_once(monkeypatch, tmp_path: Path) -> None:
    from factory.images import localbuild
    from hostkit import onecontext

    monkeypatch.setattr(localbuild, "images_cache", lambda: tmp_path / "cache")
    runs: list[tuple[str, dict[str, str]]] = []

    def run_logged(argv: list[str], log: Path, progress: object, what: str, **kwargs: object) -> None:
        environment = dict(
            item.removeprefix("--setenv=").split("=", 1) for item in argv if "--setenv=" in item
        )
        runs.append((argv[-1], environment))
        log.write_text("ran\n")

    monkeypatch.setattr(localbuild, "_run_logged", run_logged)
    monkeypatch.setattr(localbuild, "_copy_tree", lambda source, target: shutil.copytree(source, target))
    (tmp_path / "base" / "rootfs").mkdir(parents=True)
    base = localbuild.BaseRootfs("b" * 64, tmp_path / "base")
    deb = tmp_path / "one-context_7.0.0-1_all.deb"
    deb.write_bytes(b"deb")
    package = onecontext.OneContextPackage(deb, "7.0.0-1", "c" * 40, tmp_path / "src", "d1")
    matrix = load_matrix()
    first = matrix.variant(_variant_name("supernode", "1.42.0", "edge", "numpy"))
    second = matrix.variant(_variant_name("supernode", "1.41.0", "edge", "numpy"))

    timings = BuildTimings()
    built = localbuild.build_layers(first, base, package, timings=timings)
    assert [script.count("bash ") for script, _ in runs] == [3, 1]  # 10 20 30, then 40
    assert "FL_OS" in runs[0][1] and "FL_ROLE" not in runs[0][1] and "FL_VARIANT" not in runs[0][1]
    assert "FL_FLOWER_VERSION" in runs[1][1]
    assert all((localbuild.layer_directory(layer) / ".complete").is_file() for layer in built)
    localbuild.build_layers(second, base, package, timings=timings)  # shares the system layer
    assert len(runs) == 3 and "40-flower.sh" in runs[2][0]
    superlink = matrix.variant(_variant_name("superlink", "1.42.0", "standard", "numpy"))
    assert [layer.key for layer in localbuild.build_layers(superlink, base, package)] == [
        layer.key for layer in built
    ]  # the other role, same version and framework: both layers reused, nothing run
    assert len(runs) == 3
    outcomes = [(entry.name, entry.outcome) for entry in timings.entries]
    assert outcomes == [
        ("system", Outcome.BUILT),
        ("runtime", Outcome.BUILT),
        ("system", Outcome.REUSED),
        ("runtime", Outcome.BUILT),
    ]
    forced = BuildTimings()
    for variant in (first, second):
        localbuild.build_layers(variant, base, package, force=True, timings=forced)
    assert len(runs) == 6  # the shared system layer once, each runtime layer once
    assert [entry.outcome for entry in forced.entries].count(Outcome.REUSED) == 1
