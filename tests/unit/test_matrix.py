"""matrix.yaml expansion, pairs, filters, pins; bad input gets one message, exit status 2, no output."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory.model.matrix import AXES, Selection, github_matrix, load_matrix, parse_matrix
from hostkit.errors import ConfigError
from hostkit.paths import MATRIX_FILE, REPO_ROOT

RAW = yaml.safe_load(MATRIX_FILE.read_text())


def raw() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "build.py"), *args], cwd=cwd, capture_output=True, text=True
    )


# ---------------------------------------------------------------------------------------------- expansion


def test_real_matrix_expands_to_named_variants_and_pairs() -> None:
    matrix = load_matrix()
    names = [variant.name for variant in matrix.variants]
    assert len(names) == len(set(names))
    for variant in matrix.variants:
        assert variant.name == "-".join(variant.axis(axis) for axis in AXES)
    # SuperLinks never vary the axes they do not apply to.
    for variant in matrix.variants:
        if variant.role == "superlink":
            assert (variant.accel, variant.profile, variant.arch) == ("cpu", "standard", "x86_64")
    # The rules of the matrix hold.
    for variant in matrix.variants:
        if variant.role == "supernode" and variant.profile == "edge":
            assert variant.framework == "numpy"
        if variant.accel == "gpu":
            assert variant.framework in ("pytorch", "tensorflow") and variant.os != "debian12"
        if variant.arch == "aarch64":
            assert (variant.os, variant.profile) == ("ubuntu2404", "edge")
        if variant.os == "debian12":
            assert variant.framework in ("sklearn", "numpy") and variant.pins.base_image.local
    assert "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64" in names
    assert "supernode-1.42.0-ubuntu2404-gpu-standard-pytorch-x86_64" in names
    assert "supernode-1.41.0-ubuntu2404-cpu-edge-numpy-aarch64" in names
    assert not any("superlink" in name and "gpu" in name for name in names)
    expected = {
        (role, flower, os_name, accel, profile, framework, arch)
        for role in ("superlink", "supernode")
        for flower in ("1.42.0", "1.41.0")
        for os_name, accel, profile, framework, arch in [
            *[("ubuntu2404", "cpu", "standard", f, "x86_64") for f in ("pytorch", "sklearn", "tensorflow")],
            *[("opensuse156", "cpu", "standard", f, "x86_64") for f in ("pytorch", "sklearn", "tensorflow")],
            ("debian12", "cpu", "standard", "sklearn", "x86_64"),
        ]
    }
    assert expected <= {tuple(variant.axis(axis) for axis in AXES) for variant in matrix.variants}


def test_every_supernode_is_in_exactly_one_same_version_pair() -> None:
    matrix = load_matrix()
    supernodes = [variant for variant in matrix.variants if variant.role == "supernode"]
    for node in supernodes:
        owning = [pair for pair in matrix.pairs if node in pair.supernodes]
        assert len(owning) == 1, node.name
        pair = owning[0]
        assert (pair.superlink.flower, pair.superlink.os, pair.superlink.framework) == (
            node.flower,
            node.os,
            node.framework,
        )
    superlinks = {variant.name for variant in matrix.variants if variant.role == "superlink"}
    assert {pair.superlink.name for pair in matrix.pairs} == superlinks
    edge = [pair for pair in matrix.pairs if pair.supernodes[0].profile == "edge" and "ubuntu" in pair.name]
    assert {node.arch for pair in edge for node in pair.supernodes} == {"x86_64", "aarch64"}


def test_cross_version_pairs_cover_every_ordered_version_pair() -> None:
    matrix = load_matrix()
    assert matrix.cross_pairs
    for pair in matrix.cross_pairs:
        node = pair.supernodes[0]
        assert pair.cross_version and pair.superlink.flower != node.flower
        assert (pair.superlink.os, pair.superlink.framework) == (node.os, node.framework)
    same = {(p.supernodes[0].os, p.supernodes[0].accel, p.supernodes[0].profile, p.supernodes[0].framework)
            for p in matrix.pairs}  # fmt: skip
    for a in ("1.42.0", "1.41.0"):
        for b in ("1.42.0", "1.41.0"):
            if a == b:
                continue
            found = {
                (
                    p.supernodes[0].os,
                    p.supernodes[0].accel,
                    p.supernodes[0].profile,
                    p.supernodes[0].framework,
                )
                for p in matrix.cross_pairs
                if p.superlink.flower == a and p.supernodes[0].flower == b
            }
            assert found == same
    names = [pair.name for pair in matrix.pairs + matrix.cross_pairs]
    assert len(names) == len(set(names))
    data = raw()
    data["pairs"] = {"cross_version": False}
    assert parse_matrix(data).cross_pairs == ()


def test_three_flower_versions_give_six_ordered_cross_combinations() -> None:
    data = raw()
    data["axes"]["flower"] = ["1.42.0", "1.41.0", "1.40.0"]
    matrix = parse_matrix(data)
    combinations = {(p.superlink.flower, p.supernodes[0].flower) for p in matrix.cross_pairs}
    assert len(combinations) == 6


def test_pins_come_from_the_one_place() -> None:
    matrix = load_matrix()
    gpu = matrix.variant("supernode-1.42.0-ubuntu2404-gpu-standard-pytorch-x86_64")
    assert gpu.pins.cuda == RAW["components"]["gpu"]["cuda"]
    assert gpu.pins.nvidia_driver == RAW["components"]["gpu"]["nvidia_driver"]
    assert gpu.pins.framework_packages == tuple(RAW["components"]["frameworks"]["pytorch"]["gpu"]["packages"])
    cpu = matrix.variant("supernode-1.42.0-ubuntu2404-cpu-standard-pytorch-x86_64")
    assert cpu.pins.framework_index_url == "https://download.pytorch.org/whl/cpu"
    assert cpu.pins.cuda == "" and cpu.pins.nvidia_driver == ""
    assert cpu.pins.base_image.url == RAW["os"]["ubuntu2404"]["images"]["x86_64"]["url"]
    suse = matrix.variant("superlink-1.41.0-opensuse156-cpu-standard-sklearn-x86_64")
    assert suse.pins.one_context_url.endswith(".suse.noarch.rpm") and suse.pins.python == "3.11"
    local = matrix.variant("supernode-1.41.0-debian12-cpu-edge-numpy-x86_64")
    assert local.pins.one_context == "source" and local.pins.one_context_url == ""
    assert local.pins.base_image.local and local.pins.base_image.url == ""


def test_provision_env_is_the_documented_contract() -> None:
    variant = load_matrix().variant("supernode-1.42.0-opensuse156-gpu-standard-tensorflow-x86_64")
    env = variant.provision_env(payload="/var/tmp/fl-payload", build_target="chroot")
    documented = (REPO_ROOT / "docs" / "architecture.md").read_text()
    for name in env:
        assert f"`{name}`" in documented, f"{name} is not documented in docs/architecture.md"
    assert env["FL_VARIANT"] == variant.name
    assert env["FL_FRAMEWORK_PACKAGES"] == "tensorflow[and-cuda]==2.21.0 numpy==2.4.6"
    assert env["FL_ONE_CONTEXT"] == "package" and env["FL_ONE_CONTEXT_URL"].endswith(".rpm")
    assert env["FL_BUILD_TARGET"] == "chroot"
    with pytest.raises(ValueError):
        variant.provision_env(payload="/x", build_target="docker")


# ---------------------------------------------------------------------------------------------- filters


def test_filters_select_and_except() -> None:
    matrix = load_matrix()
    gpu_ubuntu = matrix.select(Selection.parse(["os=ubuntu2404,accel=gpu"], axes=matrix.axes))
    assert gpu_ubuntu and all(v.os == "ubuntu2404" and v.accel == "gpu" for v in gpu_ubuntu)
    either = matrix.select(Selection.parse(["os=debian12", "arch=aarch64"], axes=matrix.axes))
    assert {v.os for v in either} == {"debian12", "ubuntu2404"}
    alternatives = matrix.select(Selection.parse(["framework=numpy,framework=sklearn"], axes=matrix.axes))
    assert {v.framework for v in alternatives} == {"numpy", "sklearn"}
    globbed = matrix.select(Selection.parse(["os=open*", "name=*-aarch64"], axes=matrix.axes))
    assert {v.os for v in globbed} == {"opensuse156", "ubuntu2404"}
    rest = matrix.select(Selection.parse(exclude=["role=superlink", "os=ubuntu2404"], axes=matrix.axes))
    assert rest and all(v.role == "supernode" and v.os != "ubuntu2404" for v in rest)
    gpu_pairs = matrix.select_pairs(Selection.parse(["accel=gpu"], axes=matrix.axes))
    assert gpu_pairs and all(p.supernodes[0].accel == "gpu" for p in gpu_pairs)
    cross = matrix.select_pairs(Selection.parse(["flower=1.41.0"], axes=matrix.axes))
    assert any(p.cross_version for p in cross)


@pytest.mark.parametrize(
    ("clause", "problem"),
    [
        ("colour=red", "unknown axis 'colour'"),
        ("os=fedora40", "matches no value"),
        ("os", "expected axis=value"),
    ],
)
def test_bad_filters_are_config_errors(clause: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Selection.parse([clause], axes=load_matrix().axes)


def test_github_format_is_an_actions_matrix() -> None:
    matrix = load_matrix()
    document = github_matrix(matrix.variants)
    assert [entry["variant"] for entry in document["include"]] == [v.name for v in matrix.variants]
    arm = [entry for entry in document["include"] if entry["arch"] == "aarch64"]
    assert arm and all(entry["runner"] == "ARM64" for entry in arm)


def test_matrix_command_formats(tmp_path: Path) -> None:
    table = run_cli("matrix")
    assert table.returncode == 0, table.stderr
    matrix = load_matrix()
    for variant in matrix.variants:
        assert variant.name in table.stdout
    for pair in matrix.pairs + matrix.cross_pairs:
        assert pair.name in table.stdout
    as_json = run_cli("matrix", "--format", "json", "--only", "os=debian12")
    document = json.loads(as_json.stdout)
    assert {v["os"] for v in document["variants"]} == {"debian12"}
    assert document["pairs"] and document["cross_pairs"]
    github = run_cli("matrix", "--format", "github", "--except", "role=superlink")
    include = json.loads(github.stdout)["include"]
    assert include and all(entry["role"] == "supernode" for entry in include)
    assert not any(tmp_path.iterdir())
    listed = run_cli("matrix", "--format", "json", "--only", "os=debian12,role=superlink")
    rendered = run_cli("render", "--only", "os=debian12,role=superlink", "--out", str(tmp_path))
    assert rendered.returncode == 0, rendered.stderr
    names = sorted(v["name"] for v in json.loads(listed.stdout)["variants"])
    assert sorted(path.name for path in tmp_path.iterdir()) == names
    assert sorted(rendered.stdout.split()) == [str(tmp_path / name) for name in names]
    assert "render [" in rendered.stderr  # progress goes to stderr, stdout stays clean


def test_matrix_lists_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing is not rendering: `matrix` takes no --out, and in every format opens no file for writing."""
    result = run_cli("matrix", "--format", "json", "--out", str(tmp_path / "hcl"))
    assert result.returncode == 2 and "unrecognized arguments: --out" in result.stderr
    assert not (tmp_path / "hcl").exists()
    import builtins

    from factory.cli import main as cli

    real_open = builtins.open
    written: list[str] = []

    def watching_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(flag in mode for flag in "wax+"):
            written.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: written.append(str(self)))
    for output in ("table", "json", "github"):
        assert cli.main(["matrix", "--format", output]) == 0
    assert written == []


# ---------------------------------------------------------------------------------------------- bad input


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        data = data[key] if not key.isdigit() else data[int(key)]  # type: ignore[index]
    last = keys[-1]
    if value is _DELETE:
        del data[last]
    elif last.isdigit():
        data[int(last)] = value  # type: ignore[index]
    else:
        data[last] = value


_DELETE = object()

BAD_CASES = [
    # (id, path, value, field, problem)
    ("unknown axis", "axes.colour", ["red"], "axes.colour", "unknown key"),
    ("missing axis", "axes.arch", _DELETE, "axes.arch", "missing"),
    ("unknown os value", "axes.os", ["ubuntu2404", "fedora40"], "os.fedora40", "no definition"),
    ("unknown accel value", "axes.accel", ["cpu", "tpu"], "axes.accel[1]", "unknown accel 'tpu'"),
    ("flower as a number", "axes.flower", [1.42, "1.41.0"], "axes.flower[0]", "quote it"),
    ("flower not a version", "axes.flower", ["latest"], "axes.flower[0]", "not a Flower release"),
    ("axes not a list", "axes.os", "ubuntu2404", "axes.os", "expected a non-empty list"),
    ("duplicate value", "axes.flower", ["1.42.0", "1.42.0"], "axes.flower[1]", "duplicate value"),
    ("hyphen in a value", "axes.framework", ["py-torch"], "axes.framework[0]", "no '-'"),
    ("default not a value", "defaults.arch", "riscv64", "defaults.arch", "not a value of axes.arch"),
    ("role without default", "defaults", {"accel": "cpu"}, "roles.superlink", "defaults.profile"),
    (
        "exclusion names nothing",
        "exclude",
        [{"when": {"role": "superlink", "accel": "gpu"}}],
        "exclude[0].when",
        "matches no variant",
    ),
    (
        "exclusion unknown axis",
        "exclude",
        [{"when": {"colour": "red"}}],
        "exclude[0].when.colour",
        "unknown axis",
    ),
    (
        "exclusion unknown value",
        "exclude",
        [{"when": {"os": "fedora40"}}],
        "exclude[0].when.os",
        "not a value",
    ),
    (
        "empty expansion",
        "exclude",
        [{"when": {"role": "superlink"}}, {"when": {"role": "supernode"}}],
        "exclude",
        "matrix is empty",
    ),
    ("unknown top-level key", "colours", [], "colours", "unknown key"),
    (
        "checksum not sha256",
        "os.ubuntu2404.images.x86_64.checksum",
        "md5:abc",
        "os.ubuntu2404.images.x86_64.checksum",
        "sha256:",
    ),
    (
        "unpinned package",
        "components.frameworks.numpy.cpu.packages",
        ["numpy"],
        "components.frameworks.numpy.cpu.packages[0]",
        "not pinned",
    ),
    ("cross_version not a boolean", "pairs.cross_version", "yes", "pairs.cross_version", "true or false"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "problem"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_matrix_names_file_field_and_problem(path: str, value: Any, field: str, problem: str) -> None:
    data = raw()
    _set(data, path, value)
    with pytest.raises(ConfigError) as caught:
        parse_matrix(data, "matrix.yaml")
    assert caught.value.source == "matrix.yaml"
    assert caught.value.field == field, str(caught.value)
    assert problem in caught.value.problem, str(caught.value)


def test_missing_base_image_and_missing_framework_build_say_how_to_fix() -> None:
    data = raw()
    data["exclude"] = [rule for rule in data["exclude"] if "aarch64" not in json.dumps(rule)]
    with pytest.raises(ConfigError, match=r"no aarch64 base image .* exclude os=opensuse156 arch=aarch64"):
        parse_matrix(data)
    data = raw()
    data["exclude"] = [
        rule for rule in data["exclude"] if rule["when"] != {"accel": "gpu", "framework": "sklearn"}
    ]
    with pytest.raises(ConfigError, match="no gpu packages") as caught:
        parse_matrix(data)
    assert caught.value.field == "components.frameworks.sklearn"


def test_unpaired_superlink_is_an_error() -> None:
    data = raw()
    data["exclude"].append({"when": {"role": "supernode", "framework": "tensorflow"}})
    with pytest.raises(ConfigError, match="pairs with no SuperNode"):
        parse_matrix(data)


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        ("axes: [\n", "line 2, column 1", "YAML syntax error"),
        ("- just\n- a list\n", "", "expected a mapping"),
        ("", "", "got nothing"),
    ],
)
def test_bad_files_exit_2_with_one_message_and_no_output(
    tmp_path: Path, content: str, field: str, problem: str
) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(content)
    out = tmp_path / "hcl"
    result = run_cli("render", "--matrix", str(path), "--out", str(out))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {field}"), result.stderr
    assert problem in lines[0]
    assert not out.exists()


def test_semantic_error_through_the_cli_writes_nothing(tmp_path: Path) -> None:
    data = raw()
    data["exclude"].append({"when": {"role": "superlink", "profile": "edge"}})
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in ("render", "validate", "build"):
        result = run_cli(command, "--matrix", str(path), "--out", str(tmp_path / "hcl"))
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert f"{path}: exclude[{len(data['exclude']) - 1}].when: matches no variant" in result.stderr
    assert not (tmp_path / "hcl").exists()


def test_missing_file_and_bad_filter_exit_2(tmp_path: Path) -> None:
    missing = run_cli("matrix", "--matrix", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml: file not found" in missing.stderr
    bad_filter = run_cli("matrix", "--only", "colour=red")
    assert bad_filter.returncode == 2 and "--only: unknown axis 'colour'" in bad_filter.stderr
    assert bad_filter.stdout == ""
    nothing = run_cli("matrix", "--only", "os=debian12,accel=gpu")
    assert nothing.returncode == 2 and "select no variant" in nothing.stderr
