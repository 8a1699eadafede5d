"""The framework packages of matrix.yaml carry what the appliance's use cases need at run time: a SuperNode
whose use case (factory/harness/jobcheck.py, the job a pair runs from context) or framework task loads
scikit-learn's bundled demo data must have scikit-learn installed, or it trains on a fallback instead."""

from __future__ import annotations

import ast
from pathlib import Path

from factory.harness.jobcheck import use_case_for
from factory.model.matrix import load_matrix
from hostkit.paths import APPS_DIR

APP = APPS_DIR / "factory-app"


def task_modules() -> dict[str, Path]:
    """Task name -> its module file, from TASK_MODULES in the app's tasks/__init__.py (read, not imported)."""
    tree = ast.parse((APP / "factory_app" / "tasks" / "__init__.py").read_text())
    value = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "TASK_MODULES" for t in node.targets)
    )
    modules = ast.literal_eval(value)
    return {task: APP / (module.replace(".", "/") + ".py") for task, module in modules.items()}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_finds_the_demo_data_loaders() -> None:
    modules = task_modules()
    assert "sklearn.datasets" in imports(modules["image-cnn"])  # inside _demo, with its fallback
    assert "sklearn.datasets" in imports(modules["tabular"])
    assert not any(name.startswith("sklearn") for name in imports(modules["anomaly"]))


def test_every_framework_whose_use_case_loads_sklearn_demo_data_carries_scikit_learn() -> None:
    modules = task_modules()
    checked = []
    for variant in load_matrix().variants:
        if variant.role != "supernode":
            continue
        framework = variant.framework
        tasks = {use_case_for(framework), framework} & set(modules)
        if not any("sklearn.datasets" in imports(modules[task]) for task in tasks):
            continue
        packages = variant.pins.framework_packages
        assert any(package.split("==")[0] == "scikit-learn" for package in packages), (
            f"{variant.name}: its tasks {sorted(tasks)} load scikit-learn's demo data, its packages "
            f"{list(packages)} (matrix.yaml components.frameworks.{framework}) lack scikit-learn"
        )
        checked.append(variant.name)
    # both kinds are checked: the sklearn images and the pytorch ones (image-cnn's digits), CPU and GPU
    assert {name.split("-")[5] for name in checked} >= {"sklearn", "pytorch"}, checked
    assert any("-gpu-" in name and "-pytorch-" in name for name in checked), checked


def test_the_pytorch_images_pin_the_same_scikit_learn_as_the_sklearn_ones() -> None:
    matrix = load_matrix()
    pins = {
        f"{variant.framework}-{variant.accel}": variant.pins.framework_packages
        for variant in matrix.variants
        if variant.role == "supernode"
    }
    wanted = [package for package in pins["sklearn-cpu"] if package.startswith("scikit-learn==")]
    for key in ("pytorch-cpu", "pytorch-gpu"):
        assert [package for package in pins[key] if package.startswith("scikit-learn==")] == wanted, pins[key]
