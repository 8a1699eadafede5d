"""Running the real Packer binary on rendered build directories: fmt, validate and build.

Packer 1.6.6 (Debian's, the one on these machines) has the qemu builder built in and rejects the
``required_plugins`` block, so for Packer < 1.7 every command runs on a *tree*: a directory of symlinks to
the rendered files without ``plugins.pkr.hcl``. Packer 1.7+ runs on the rendered directory itself (after
``packer init``).

API::

    check_directory(directory, overrides) -> CheckResult   # python-hcl2 parse, fmt -check, validate
    plan_build(variant, var_overrides) -> BuildPlan   # the checked ``packer build`` command
    build_variant(plan) -> Image   # packer build; artifacts and manifest
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from factory.images.hcl import HCL_DIR, parse_directory, provisioning_scripts
from factory.model.image import Image, ImageFormat
from factory.model.manifest import manifest_path
from factory.model.matrix import Variant
from hostkit.errors import ConfigError, FactoryError
from hostkit.fileio import replace_directory
from hostkit.paths import BUILD_DIR
from hostkit.progress import DEFAULT as DEFAULT_PROGRESS
from hostkit.progress import Progress

PLUGINS_FILE = "plugins.pkr.hcl"
IMAGES_DIR = BUILD_DIR / "images"
LOGS_DIR = BUILD_DIR / "logs"
WORK_DIR = BUILD_DIR / "packer-work"
# Validation of a variant whose base is built locally, before that base exists: obviously not a real
# image (the path does not exist and "none" skips the checksum); builds must pass the real values.
VALIDATE_ONLY_BASE = {
    "base_image_url": "file:///validate-only/local-base-not-built.qcow2",
    "base_image_checksum": "none",
}


def packer_binary() -> str:
    binary = shutil.which(os.environ.get("PACKER", "packer"))
    if binary is None:
        raise FactoryError("packer is not installed (scripts/setup.sh installs Debian's packer)")
    return binary


@functools.cache
def packer_version() -> tuple[int, int, int]:
    result = subprocess.run([packer_binary(), "version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise FactoryError(f"cannot tell the Packer version: {result.stdout}{result.stderr}".strip())
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def supports_required_plugins() -> bool:
    return packer_version() >= (1, 7, 0)


def packer_tree(directory: Path, work: Path) -> Path:
    """The directory Packer should run on: the rendered one, or for Packer < 1.7 a tree of symlinks to
    it without the plugin pins (created under ``work``)."""
    if supports_required_plugins():
        return directory
    tree = work / directory.name
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    for entry in directory.iterdir():
        if entry.name != PLUGINS_FILE:
            (tree / entry.name).symlink_to(entry.resolve())
    return tree


def var_arguments(overrides: Mapping[str, str], var_files: Sequence[Path] = ()) -> list[str]:
    arguments = [f"-var-file={Path(path).resolve()}" for path in var_files]
    arguments += [f"-var={name}={value}" for name, value in overrides.items()]
    return arguments


def _clean(output: str) -> str:
    """Packer's message without blank-line padding and the '(source code not available)' noise."""
    lines = [line.rstrip() for line in output.splitlines() if "(source code not available)" not in line]
    return "\n".join(line for line in lines if line.strip()).strip()


@dataclass
class CheckResult:
    """Outcome of checking one rendered directory; timings in seconds."""

    name: str
    ok: bool = True
    problems: list[str] = dataclasses.field(default_factory=list)
    parse_s: float = 0.0
    fmt_s: float = 0.0
    validate_s: float = 0.0

    def fail(self, stage: str, message: str) -> None:
        self.ok = False
        self.problems.append(f"{stage}: {message}")


def check_directory(
    directory: Path,
    local_base: bool,
    overrides: Mapping[str, str] | None = None,
    var_files: Sequence[Path] = (),
    work: Path | None = None,
) -> CheckResult:
    """python-hcl2 parse, ``packer fmt -check`` and ``packer validate`` of one rendered directory."""
    result = CheckResult(directory.name)
    started = time.perf_counter()
    try:
        parse_directory(directory)
    except FactoryError as error:
        result.fail("python-hcl2", str(error).split(": ", 1)[-1])
    result.parse_s = time.perf_counter() - started

    packer = packer_binary()
    started = time.perf_counter()
    formatted = subprocess.run(
        [packer, "fmt", "-check", "-diff", str(directory)], capture_output=True, text=True, check=False
    )
    result.fmt_s = time.perf_counter() - started
    if formatted.returncode != 0:
        result.fail("packer fmt -check", _clean(formatted.stdout + formatted.stderr) or "not formatted")

    values = dict(overrides or {})
    if local_base:
        for name, value in VALIDATE_ONLY_BASE.items():
            values.setdefault(name, value)
    with tempfile.TemporaryDirectory(prefix="validate-", dir=work) as scratch:
        tree = packer_tree(directory, Path(scratch))
        started = time.perf_counter()
        validated = subprocess.run(
            [packer, "validate", *var_arguments(values, var_files), str(tree)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
        )
        result.validate_s = time.perf_counter() - started
    if validated.returncode != 0:
        result.fail("packer validate", _clean(validated.stdout + validated.stderr))
    return result


def check_directories(
    entries: Sequence[tuple[Path, bool]],
    overrides: Mapping[str, str] | None = None,
    var_files: Sequence[Path] = (),
    jobs: int | None = None,
    progress: Progress | None = None,
) -> list[CheckResult]:
    """Check many directories, ``jobs`` at a time (default: one per CPU), with a counter."""
    from concurrent.futures import ThreadPoolExecutor

    progress = progress or DEFAULT_PROGRESS
    jobs = jobs or os.cpu_count() or 1
    packer_version()  # fail once, early, if Packer is missing
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(check_directory, directory, local, overrides, var_files, WORK_DIR)
            for directory, local in entries
        ]
        return [future.result() for future in progress.iterate(futures, "validate")]


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildPlan:
    """Everything ``packer build`` of one variant needs; ``command`` is what runs (in ``tree``)."""

    variant: Variant
    directory: Path
    command: list[str]
    environment: dict[str, str]
    output: Path
    staging: Path
    log: Path
    tree: Path | None = None  # Packer < 1.7: the directory's symlink tree without plugins.pkr.hcl

    def shell(self) -> str:
        """The build as one POSIX shell line a user can paste: into the rendered directory (where
        ``build_variant`` runs Packer), make its TMPDIR, run Packer with the environment; every word
        quoted with ``shlex``."""
        env = " ".join(f"{name}={shlex.quote(value)}" for name, value in self.environment.items())
        directory = shlex.quote(str(self.directory))
        steps = [f"cd {directory}", f"mkdir -p {shlex.quote(self.environment['TMPDIR'])}"]
        if self.tree is not None:  # what packer_tree makes
            tree = shlex.quote(str(self.tree))
            steps += [
                f"rm -rf {tree}",
                f"mkdir -p {tree}",
                f"find {directory} -mindepth 1 -maxdepth 1 ! -name {PLUGINS_FILE} "
                f"-exec ln -s {{}} {tree}/ ';'",
            ]
        steps.append(f"{env} {shlex.join(self.command)}")
        return " && ".join(steps)


def _running_under_a_hypervisor() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as stream:
            return any(line.startswith("flags") and " hypervisor" in line for line in stream)
    except OSError:
        return False


def detect_accelerator(arch: str) -> str:
    """``kvm`` on a physical x86_64 host whose /dev/kvm we may use, ``tcg`` otherwise.

    Inside a VM (nested KVM, as on the factory's own build machines) a Linux guest under KVM hangs even
    though /dev/kvm exists and tiny guests run, so nested hosts get ``tcg``. ``FLOWER_FACTORY_ACCEL``
    (kvm or tcg) overrides the guess; ``--var accelerator=...`` overrides both.
    """
    forced = os.environ.get("FLOWER_FACTORY_ACCEL")
    if forced:
        return forced
    if arch != "x86_64" or os.uname().machine != "x86_64":
        return "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or _running_under_a_hypervisor():
        return "tcg"
    return "kvm"


def plan_build(
    variant: Variant,
    var_overrides: Mapping[str, str] | None = None,
    var_files: Sequence[Path] = (),
    hcl_root: Path = HCL_DIR,
    images_root: Path = IMAGES_DIR,
) -> BuildPlan:
    """Check that the rendered variant can be built and assemble the ``packer build`` command."""
    directory = (hcl_root / variant.name).resolve()  # absolute: Packer runs inside it
    if not (directory / "build.pkr.hcl").is_file():
        raise FactoryError(f"{variant.name}: not rendered in {directory}: run build.py render first")
    if not provisioning_scripts(directory / "payload" / "provision"):
        raise FactoryError(
            f"{variant.name}: no provisioning scripts (images/provision/NN-*.sh): the image would have "
            "nothing installed"
        )
    overrides = dict(var_overrides or {})
    if variant.pins.base_image.local:
        missing = [name for name in VALIDATE_ONLY_BASE if not overrides.get(name)]
        if missing:
            raise ConfigError(
                "command line",
                "--var",
                f"{variant.name} builds from a local base: pass {' and '.join(missing)} "
                "(file:///path/base.qcow2 and sha256:<hex>; python build.py images builds the base)",
            )
        if overrides["base_image_checksum"] == "none":
            raise ConfigError("command line", "--var", "base_image_checksum=none is for validation only")
    overrides.setdefault("accelerator", detect_accelerator(variant.arch))
    output = images_root / variant.name
    staging = images_root / f".{variant.name}.partial"
    overrides["output_directory"] = str(staging.resolve())
    work = WORK_DIR / variant.name
    log = LOGS_DIR / f"{variant.name}.packer.log"
    command = [packer_binary(), "build", "-parallel-builds=1", "-color=false", "-force"]
    command += var_arguments(overrides, var_files)
    tree = None if supports_required_plugins() else (work / "tree" / variant.name).resolve()
    command.append(str(tree or directory))
    environment = {"TMPDIR": str((work / "tmp").resolve()), "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}
    return BuildPlan(variant, directory, command, environment, output, staging, log, tree)


def build_variant(
    plan: BuildPlan, progress: Progress | None = None, on_line: Callable[[str], None] | None = None
) -> Image:
    """Run ``plan`` (:func:`plan_build`): ``packer build`` one rendered variant. Output goes to a log file;
    Packer's step lines (``==>``) are shown as progress. The image lands in ``images_root/<variant>/`` only
    when the build succeeded."""
    progress = progress or DEFAULT_PROGRESS
    variant = plan.variant
    work = WORK_DIR / variant.name
    if work.exists():
        shutil.rmtree(work)
    (work / "tmp").mkdir(parents=True)
    if not supports_required_plugins():
        packer_tree(plan.directory, work / "tree")
    plan.log.parent.mkdir(parents=True, exist_ok=True)
    plan.staging.parent.mkdir(parents=True, exist_ok=True)
    if plan.staging.exists():
        shutil.rmtree(plan.staging)
    started = time.monotonic()
    with progress.stage(f"packer build {variant.name} (log: {plan.log})"):
        _run_packer(plan, on_line or progress.line)
    image = plan.staging / f"{variant.name}.qcow2"
    if not image.is_file() or not manifest_path(image).is_file():
        raise FactoryError(f"{variant.name}: packer build left no image and manifest in {plan.staging}")
    replace_directory(plan.staging, plan.output)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    return Image.beside(variant.name, plan.output / image.name, ImageFormat.QCOW2, seconds=seconds)


def _run_packer(plan: BuildPlan, show: Callable[[str], None]) -> None:
    """Run the plan's command, its output into the log, ``==>`` lines to ``show``; FactoryError with
    the last lines when Packer fails (the staging directory is removed)."""
    name = plan.variant.name
    with open(plan.log, "w") as log:
        process = subprocess.Popen(
            plan.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **plan.environment},
            cwd=plan.directory,
        )
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            log.write(line)
            log.flush()
            tail = [*tail[-19:], line.rstrip()]
            if line.startswith("==> "):
                show(f"{name}: {line[4:].rstrip()}")
        status = process.wait()
    if status != 0:
        shutil.rmtree(plan.staging, ignore_errors=True)
        last = "\n".join(f"    {line}" for line in tail if line.strip())
        raise FactoryError(f"{name}: packer build failed (exit {status}); full log: {plan.log}\n{last}")
