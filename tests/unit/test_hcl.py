"""Rendering Packer HCL: layering and overrides as the real Packer sees them, seeds, payload, validation."""

from __future__ import annotations

import dataclasses
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

from factory.images.hcl import (
    LAYER_FILES,
    RenderSources,
    hcl_string,
    layered_values,
    parse_directory,
    pkrvars,
    prune_stale,
    render_variant,
    render_variants,
)
from factory.images.packer import check_directory, packer_binary, packer_tree
from factory.model import params
from factory.model.matrix import load_matrix, parse_matrix
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import MATRIX_FILE, PACKER_DIR, REPO_ROOT

PACKER = shutil.which("packer")
needs_packer = pytest.mark.skipif(
    PACKER is None, reason="packer is not installed (scripts/setup.sh installs it)"
)

DEBIAN_NODE = "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64"
UBUNTU_GPU = "supernode-1.42.0-ubuntu2404-gpu-standard-pytorch-x86_64"
UBUNTU_ARM = "supernode-1.41.0-ubuntu2404-cpu-edge-numpy-aarch64"
# One variant per OS, role, accelerator and architecture: validated with the real Packer in the default run.
REPRESENTATIVE = [
    DEBIAN_NODE,
    "superlink-1.41.0-debian12-cpu-standard-numpy-x86_64",
    "supernode-1.42.0-debian12-cpu-edge-numpy-x86_64",
    UBUNTU_GPU,
    UBUNTU_ARM,
    "superlink-1.42.0-ubuntu2404-cpu-standard-tensorflow-x86_64",
    "superlink-1.42.0-opensuse156-cpu-standard-pytorch-x86_64",
    "supernode-1.41.0-opensuse156-gpu-standard-tensorflow-x86_64",
    "supernode-1.42.0-opensuse156-cpu-edge-numpy-x86_64",
]


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


@pytest.fixture
def fixture_sources(tmp_path: Path) -> RenderSources:
    """Provisioning scripts, appliance code and apps of our own, so rendering does not depend on main."""
    provision = tmp_path / "provision"
    (provision / "lib").mkdir(parents=True)
    (provision / "lib" / "distro.sh").write_text("distro_install() { :; }\n")
    for name in ("20-flower.sh", "10-base.sh", "90-appliance.sh"):
        (provision / name).write_text(f"#!/usr/bin/env bash\necho {name}\n")
    (provision / "README.md").write_text("not a script\n")
    (provision / "notes.sh").write_text("not numbered\n")
    appliance = tmp_path / "appliance"
    appliance.mkdir()
    (appliance / "service").write_text("#!/usr/bin/env bash\n")
    apps = tmp_path / "apps"
    (apps / "numpy-app").mkdir(parents=True)
    (apps / "numpy-app" / "pyproject.toml").write_text("[project]\n")
    return RenderSources(provision=provision, appliance=appliance, apps=apps)


def inspect_values(directory: Path, *arguments: str) -> dict[str, str]:
    """Variable values as the real Packer resolves them (packer inspect)."""
    with_plugins = directory / "plugins.pkr.hcl"
    tree = packer_tree(directory, directory.parent / f".tree-{directory.name}")
    target = tree if with_plugins.exists() else directory
    result = subprocess.run(
        [packer_binary(), "inspect", *arguments, str(target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    values = {}
    for line in result.stdout.splitlines():
        match = re.match(r'^var\.([a-z_]+): "(.*)"$', line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


# ---------------------------------------------------------------------------------------------- rendering


def test_render_runs_the_scripts_in_order_with_the_payload(matrix, fixture_sources, tmp_path: Path) -> None:
    out = tmp_path / "hcl"
    directory = render_variant(matrix, matrix.variant(DEBIAN_NODE), out, fixture_sources)
    build = (directory / "build.pkr.hcl").read_text()
    steps = re.findall(r"/provision/([0-9]{2}-[a-z]+\.sh)", build)
    assert steps == ["10-base.sh", "20-flower.sh", "90-appliance.sh"]
    payload = directory / "payload"
    assert (payload / "provision" / "lib" / "distro.sh").is_file()
    assert (payload / "appliance" / "service").is_file()
    assert (payload / "apps" / "numpy-app" / "pyproject.toml").is_file()
    assert (payload / "params" / "params-supernode.sh").read_text() == params.guest_defaults("supernode")
    # Every FL_* variable of the contract reaches the scripts.
    env = matrix.variant(DEBIAN_NODE).provision_env(payload="/var/tmp/fl-payload", build_target="packer")
    for name in env:
        assert f'"{name}=' in build, name
    # one-context is no payload: vendor images download the released package, local ones have it in
    # their local base qcow2.
    assert (payload / "monitoring" / "targets.py").is_file()  # the monitoring role's files (50-appliance.sh)
    assert sorted(path.name for path in payload.iterdir()) == [
        "appliance", "apps", "monitoring", "params", "provision",
    ]  # fmt: skip


def test_render_without_scripts_renders_no_provisioning_step(matrix, fixture_sources, tmp_path: Path) -> None:
    sources = RenderSources(provision=tmp_path / "absent", apps=fixture_sources.apps)
    directory = render_variant(matrix, matrix.variant(DEBIAN_NODE), tmp_path / "hcl", sources)
    assert "/provision/" not in (directory / "build.pkr.hcl").read_text()


def test_seeds_and_build_key(matrix, fixture_sources, tmp_path: Path) -> None:
    out = tmp_path / "hcl"
    debian = render_variant(matrix, matrix.variant(DEBIAN_NODE), out, fixture_sources)
    ubuntu = render_variant(matrix, matrix.variant(UBUNTU_GPU), out, fixture_sources)
    for directory in (debian, ubuntu):
        key = directory / ".ssh" / "build_key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public = (debian / ".ssh" / "build_key.pub").read_text().strip()
    source = (debian / "source.pkr.hcl").read_text()
    assert 'cd_label = "CONTEXT"' in source and "seed/context.sh" in source
    context = (debian / "seed" / "context.sh").read_text()
    assert f"SSH_PUBLIC_KEY='{public}'" in context
    assert "ETH0_MAC='52:54:00:12:34:56'" in context and "mac=52:54:00:12:34:56" in source
    ubuntu_source = (ubuntu / "source.pkr.hcl").read_text()
    assert 'cd_label = "cidata"' in ubuntu_source
    user_data = yaml.safe_load((ubuntu / "seed" / "user-data").read_text())
    root = user_data["users"][0]
    assert root["name"] == "root"
    assert root["ssh_authorized_keys"] == [(ubuntu / ".ssh" / "build_key.pub").read_text().strip()]
    assert user_data["ssh_pwauth"] is False
    # SSH is forwarded from loopback only.
    forwards = re.findall(r"hostfwd=tcp:([^:]*):", ubuntu_source)
    assert forwards == ["127.0.0.1"]
    # Re-rendering keeps the key (the rendered directory stays usable by hand).
    again = render_variant(matrix, matrix.variant(DEBIAN_NODE), out, fixture_sources)
    assert (again / ".ssh" / "build_key.pub").read_text().strip() == public
    assert not [path for path in out.iterdir() if path.name.startswith(".")], "staging directories left"


def test_layers_are_written_in_order_and_parse(matrix, fixture_sources, tmp_path: Path) -> None:
    directory = render_variant(matrix, matrix.variant(UBUNTU_ARM), tmp_path, fixture_sources)
    parsed = parse_directory(directory)
    assert set(LAYER_FILES) <= set(parsed)
    os_layer = parsed["20-os.auto.pkrvars.hcl"]
    assert os_layer["qemu_binary"] == '"qemu-system-aarch64"'
    assert os_layer["base_image_url"].endswith('arm64.img"')
    variant_layer = parsed["30-variant.auto.pkrvars.hcl"]
    assert variant_layer["variant"] == f'"{UBUNTU_ARM}"'
    assert variant_layer["memory"] == 1024  # packer.variants rule for edge


def test_pkrvars_strings_survive_packer(tmp_path: Path) -> None:
    tricky = 'a "quoted" ${not.interpolated} %{nor} back\\slash'
    (tmp_path / "v.pkr.hcl").write_text('variable "x" {\n  type = string\n}\n')
    (tmp_path / "x.auto.pkrvars.hcl").write_text(pkrvars({"x": tricky}, "test"))
    if PACKER:
        assert inspect_values(tmp_path)["x"] == tricky.replace("\\", "\\\\").replace('"', '\\"')
    assert hcl_string("${x}") == '"$${x}"'


@needs_packer
def test_layering_and_overrides_as_packer_resolves_them(matrix, fixture_sources, tmp_path: Path) -> None:
    """common -> arch/os -> variant -> -var-file -> -var, checked with `packer inspect`."""
    data = yaml.safe_load(MATRIX_FILE.read_text())
    data["packer"]["common"].update({"disk_size": "1G", "memory": 512, "cpus": 3, "ssh_timeout": "5m"})
    data["packer"]["os"]["ubuntu2404"].update({"disk_size": "2G", "memory": 768})
    data["packer"]["variants"] = [{"when": {"accel": "gpu"}, "vars": {"disk_size": "3G"}}]
    layered = parse_matrix(data)
    directory = render_variant(layered, layered.variant(UBUNTU_GPU), tmp_path / "hcl", fixture_sources)
    resolved = inspect_values(directory)
    assert resolved["cpus"] == "3"  # common only
    assert resolved["memory"] == "768"  # os beats common
    assert resolved["disk_size"] == "3G"  # variant rule beats os
    assert resolved["ssh_timeout"] == "5m"
    assert resolved["base_image_checksum"] == layered.variant(UBUNTU_GPU).pins.base_image.checksum
    assert resolved["nvidia_driver"] == layered.variant(UBUNTU_GPU).pins.nvidia_driver
    # Our model of the layering agrees with Packer on every variable that has a value.
    ours = layered_values(directory)
    for name, value in resolved.items():
        assert str(ours[name]).lower() == value.lower(), name
    user_file = tmp_path / "user.pkrvars.hcl"
    user_file.write_text('disk_size = "4G"\nmemory    = 4096\n')
    with_file = inspect_values(directory, f"-var-file={user_file}")
    assert (with_file["disk_size"], with_file["memory"]) == ("4G", "4096")
    with_var = inspect_values(directory, f"-var-file={user_file}", "-var", "disk_size=5G")
    assert (with_var["disk_size"], with_var["memory"]) == ("5G", "4096")


def test_unknown_packer_variable_in_matrix_is_a_config_error(matrix, fixture_sources, tmp_path: Path) -> None:
    data = yaml.safe_load(MATRIX_FILE.read_text())
    data["packer"]["os"]["debian12"]["disk_sise"] = "4G"
    broken = parse_matrix(data, "matrix.yaml")
    with pytest.raises(ConfigError) as caught:
        render_variant(broken, broken.variant(DEBIAN_NODE), tmp_path / "hcl", fixture_sources)
    assert caught.value.field == "packer.os.debian12.disk_sise"
    assert "not a variable of packer/variables.pkr.hcl" in caught.value.problem
    assert not (tmp_path / "hcl").exists()


def test_a_template_error_leaves_the_previous_render_untouched(
    matrix, fixture_sources, tmp_path: Path
) -> None:
    """One run is one step: a template that fails on the second variant writes nothing new, keeps what the
    last good run rendered and leaves no staging directory behind."""
    out = tmp_path / "hcl"
    first, second = matrix.variant(DEBIAN_NODE), matrix.variant(UBUNTU_GPU)
    render_variants(matrix, [first], out, fixture_sources)
    before = (out / first.name / "build.pkr.hcl").read_text()
    templates = tmp_path / "templates"
    shutil.copytree(fixture_sources.templates, templates)
    source = (templates / "source.pkr.hcl.j2").read_text()
    (templates / "source.pkr.hcl.j2").write_text(
        source + f"{{% if variant == '{second.name}' %}}{{{{ nope }}}}{{% endif %}}\n"
    )
    broken = dataclasses.replace(fixture_sources, templates=templates)
    with pytest.raises(FactoryError, match="template error"):
        render_variants(matrix, [first, second], out, broken)
    assert sorted(path.name for path in out.iterdir()) == [first.name]
    assert (out / first.name / "build.pkr.hcl").read_text() == before


def test_prune_removes_only_rendered_directories_of_variants_gone_from_the_matrix(
    matrix, fixture_sources, tmp_path: Path
) -> None:
    out = tmp_path / "hcl"
    render_variants(matrix, [matrix.variant(DEBIAN_NODE)], out, fixture_sources)
    gone = out / "supernode-0.0.1-debian12-cpu-standard-sklearn-x86_64"
    shutil.copytree(out / DEBIAN_NODE, gone)
    (out / "notes").mkdir()
    assert prune_stale(out, matrix) == [gone]
    assert sorted(path.name for path in out.iterdir()) == sorted([DEBIAN_NODE, "notes"])


# ---------------------------------------------------------------------------------------------- Packer


@needs_packer
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_representative_variants_are_fmt_clean_and_valid(
    matrix, fixture_sources, tmp_path: Path, name
) -> None:
    variant = matrix.variant(name)
    directory = render_variant(matrix, variant, tmp_path / "hcl", fixture_sources)
    result = check_directory(directory, variant.pins.base_image.local, work=tmp_path)
    assert result.ok, "\n".join(result.problems)


@needs_packer
def test_local_base_needs_its_variables(matrix, fixture_sources, tmp_path: Path) -> None:
    directory = render_variant(matrix, matrix.variant(DEBIAN_NODE), tmp_path / "hcl", fixture_sources)
    # Without the validation stand-in the variable validation of the template refuses it, clearly.
    result = check_directory(directory, local_base=False, work=tmp_path)
    assert not result.ok
    message = "\n".join(result.problems)
    assert "packer validate" in message and "base_image_url variable is empty" in message
    real_looking = {
        "base_image_url": "file:///var/tmp/debian12-base.qcow2",
        "base_image_checksum": "sha256:" + "ab" * 32,
    }
    assert check_directory(directory, local_base=True, overrides=real_looking, work=tmp_path).ok


@needs_packer
def test_broken_template_fails_naming_the_variant_and_packer_message(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PACKER_DIR, templates)
    source = templates / "source.pkr.hcl.j2"
    source.write_text(
        source.read_text().replace(
            "  disk_image   = true\n", '  disk_image   = true\n  colour       = "red"\n'
        )
    )
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build.py"), "validate", "--only", f"name={DEBIAN_NODE}",
         "--templates", str(templates), "--out", str(tmp_path / "hcl")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED  {DEBIAN_NODE}" in result.stdout
    assert 'An argument named "colour" is not expected here' in result.stdout
    assert DEBIAN_NODE in result.stderr


@needs_packer
def test_unformatted_template_fails_fmt_check(matrix, fixture_sources, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PACKER_DIR, templates)
    source = templates / "source.pkr.hcl.j2"
    source.write_text(source.read_text().replace("  disk_image   = true", "  disk_image = true"))
    sources = RenderSources(templates=templates, provision=fixture_sources.provision)
    directory = render_variant(matrix, matrix.variant(UBUNTU_GPU), tmp_path / "hcl", sources)
    result = check_directory(directory, local_base=False, work=tmp_path)
    assert [problem.split(":")[0] for problem in result.problems] == ["packer fmt -check"]


@needs_packer
@pytest.mark.slow
def test_whole_matrix_validates_with_real_packer(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build.py"), "validate", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    count = len(load_matrix().variants)
    assert f"{count} of {count} variants valid" in result.stdout


def test_python_hcl2_parses_every_template_output(matrix, fixture_sources, tmp_path: Path) -> None:
    for name in REPRESENTATIVE:
        directory = render_variant(matrix, matrix.variant(name), tmp_path, fixture_sources)
        parsed = parse_directory(directory)
        sources = parsed["source.pkr.hcl"]["source"][0]
        assert '"qemu"' in sources
        assert hcl2.loads((directory / "plugins.pkr.hcl").read_text())["packer"]


def test_rendering_is_deterministic_apart_from_the_key(matrix, fixture_sources, tmp_path: Path) -> None:
    first = render_variant(matrix, matrix.variant(UBUNTU_GPU), tmp_path / "a", fixture_sources)
    second = render_variant(matrix, matrix.variant(UBUNTU_GPU), tmp_path / "b", fixture_sources)
    for path in sorted(first.rglob("*")):
        relative = path.relative_to(first)
        if path.is_file() and relative.parts[0] not in (".ssh", "seed"):
            assert path.read_bytes() == (second / relative).read_bytes(), relative


def test_progress_counts_with_an_eta_on_a_terminal_and_one_line_in_a_log() -> None:
    import io

    from hostkit.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    log, terminal = io.StringIO(), Terminal()
    assert list(Progress(log).iterate(range(5), "render")) == [0, 1, 2, 3, 4]
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("render [5/5] done (")
    list(Progress(terminal).iterate(range(3), "build"))
    frames = terminal.getvalue().split("\r")
    assert "0/3" in frames[1] and "eta" in frames[2] and "2/3" in frames[3] and "3/3" in frames[-1]
    quiet = io.StringIO()
    list(Progress(quiet, quiet=True).iterate(range(3), "x"))
    assert quiet.getvalue() == ""
