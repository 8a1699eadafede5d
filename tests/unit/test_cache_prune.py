"""``build.py cache prune``: what the current matrix does not reach goes, what a build may use stays (a
small fake cache; nothing here touches the real one)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.images import cache, localbuild
from factory.model.matrix import load_matrix
from hostkit.errors import ConfigError
from hostkit.paths import REPO_ROOT

DAY = 24 * 3600


def entry(root: Path, relative: str, size: int = 4096, age: float = 2 * DAY, complete: bool = True) -> Path:
    """A cache entry directory with one file of ``size`` bytes, changed ``age`` seconds ago."""
    path = root / relative
    (path / "rootfs").mkdir(parents=True)
    (path / "rootfs" / "data").write_bytes(os.urandom(size))
    stamp = time.time() - age
    if complete:
        (path / ".complete").write_text("key\n")
        os.utime(path / ".complete", (stamp, stamp))
    os.utime(path, (stamp, stamp))
    return path


def verdicts(entries: list[cache.Entry]) -> dict[str, cache.Verdict]:
    return {f"{e.area}/{e.path.name}": e.verdict for e in entries}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_old_unreached_unlocked_entries_go(tmp_path: Path) -> None:
    images = tmp_path / "images"
    wanted = entry(images, "appliances/superlink-a-1111")
    stale = entry(images, "appliances/superlink-a-0000", size=64 * 1024)
    stale_layer = entry(images, "layers/debian12-runtime-0000")
    recent = entry(images, "layers/debian12-runtime-2222", age=60)
    locked = entry(images, "appliances/supernode-b-3333")
    running = entry(images, f"work/supernode-b-4444-{os.getpid()}-1")
    leftover = entry(images, f"work/supernode-b-5555-{dead_pid()}-1", complete=False)
    with open(images / "appliances" / f".{locked.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        planned = cache.plan_prune(images, {wanted}, min_age=3600)
        assert verdicts(planned) == {
            "appliances/superlink-a-0000": cache.Verdict.REMOVE,
            "appliances/superlink-a-1111": cache.Verdict.WANTED,
            "appliances/supernode-b-3333": cache.Verdict.LOCKED,
            "layers/debian12-runtime-0000": cache.Verdict.REMOVE,
            "layers/debian12-runtime-2222": cache.Verdict.RECENT,
            f"work/{running.name}": cache.Verdict.RUNNING,
            f"work/{leftover.name}": cache.Verdict.REMOVE,
        }
        sizes = {e.path: e.size for e in planned}
        assert sizes[stale] >= 64 * 1024 > sizes[stale_layer] > 0

        dry = cache.prune(images, {wanted}, min_age=3600, dry_run=True)
        assert verdicts(dry) == verdicts(planned)
        assert all(path.exists() for path in (stale, stale_layer, leftover))

        done = cache.prune(images, {wanted}, min_age=3600, dry_run=False)
    assert verdicts(done) == verdicts(planned)
    assert not stale.exists() and not stale_layer.exists() and not leftover.exists()
    assert all(path.exists() for path in (wanted, recent, locked, running))


def test_an_entry_locked_after_the_plan_is_kept(tmp_path: Path) -> None:
    images = tmp_path / "images"
    stale = entry(images, "appliances/superlink-a-0000")
    (planned,) = cache.plan_prune(images, set(), min_age=0)
    assert planned.verdict is cache.Verdict.REMOVE
    with open(images / "appliances" / f".{stale.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert cache.remove_entry(planned) is cache.Verdict.LOCKED
    assert stale.exists()
    assert cache.remove_entry(planned) is cache.Verdict.REMOVE
    assert not stale.exists()


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--min-age"):
        cache.plan_prune(tmp_path, set(), min_age=-1)
    with pytest.raises(ConfigError, match="not a directory"):
        cache.plan_prune(tmp_path / "missing", set(), min_age=0)


def test_the_matrix_reaches_its_images_layers_and_base() -> None:
    """The wanted set is the builder's own paths: the base, and per buildable variant its two layers and
    its appliance image; variants the local builder does not make add nothing."""
    matrix = load_matrix()
    buildable = cache.locally_buildable(matrix.variants)
    assert buildable and len(buildable) < len(matrix.variants)
    wanted = cache.wanted_entries(matrix.variants)
    images = localbuild.images_cache()
    assert localbuild.base_rootfs().directory in wanted
    appliances = {path.name.rsplit("-", 1)[0] for path in wanted if path.parent == images / "appliances"}
    assert appliances == {variant.name for variant in buildable}
    layers = {path for path in wanted if path.parent == images / "layers"}
    assert {path.name.split("-")[1] for path in layers} == {"system", "runtime"}
    assert len(layers) < 2 * len(buildable), "variants share layers"


def run_cli(cache_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "FLOWER_FACTORY_CACHE": str(cache_dir)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "build.py"), "cache", *arguments],
        env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_command_prunes_a_fake_cache(tmp_path: Path) -> None:
    images = tmp_path / "images"
    # An entry at the path the matrix's first buildable variant's image has (re-rooted in the fake cache).
    variant = cache.locally_buildable(load_matrix().variants)[0]
    real = next(
        path
        for path in cache.wanted_entries([variant])
        if path.parent == localbuild.images_cache() / "appliances"
    )
    kept = entry(images, f"appliances/{real.name}")
    stale = entry(images, f"appliances/{variant.name}-0000000000000000", size=1024 * 1024)

    dry = run_cli(tmp_path, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and str(stale) in dry.stdout and str(kept) not in dry.stdout
    assert "would remove 1 entry" in dry.stdout and "1 wanted" in dry.stdout
    assert stale.exists()

    done = run_cli(tmp_path, "prune")
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout and str(stale) in done.stdout and "MiB freed" in done.stdout
    assert not stale.exists() and kept.exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("prune", "--min-age", "-1"), "expected hours"),
        (("prune", "--min-age", "soon"), "expected hours"),
        (("prune", "--min-age", "nan"), "expected hours"),
        (("sweep",), "invalid choice"),
    ],
)
def test_the_command_refuses_bad_input(tmp_path: Path, arguments: tuple[str, ...], expected: str) -> None:
    result = run_cli(tmp_path, *arguments)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_refuses_a_cache_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("not a directory")
    result = run_cli(tmp_path, "prune", "--dry-run")
    assert result.returncode == 2 and "is not a directory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
