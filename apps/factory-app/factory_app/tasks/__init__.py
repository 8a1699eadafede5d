"""Training tasks. Each module has the same three functions, working on lists of numpy arrays:

- ``initial_arrays(config) -> list[np.ndarray]``
- ``train(arrays, data, config, global_arrays) -> (arrays, num_examples, metrics)``
- ``evaluate(arrays, data, config) -> (num_examples, metrics)``

and ``load_data(partition_id, num_partitions, config)`` giving the node's (train, test) data. Framework
modules are imported only when their task is selected, so an image without torch can still run numpy.
What each task must reach to pass a pair test is declared in ``apps/task-checks.toml``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TASK_MODULES = {
    "numpy": "factory_app.tasks.numpy_linear",
    "sklearn": "factory_app.tasks.sklearn_digits",
    "pytorch": "factory_app.tasks.pytorch_cnn",
    "tensorflow": "factory_app.tasks.tensorflow_cnn",
    # Use cases for train on deploy (docs/train-on-deploy.md), each with demo data and a data-path format
    "image-cnn": "factory_app.tasks.image_cnn",
    "tabular": "factory_app.tasks.tabular",
    "anomaly": "factory_app.tasks.anomaly",
    "edge-image": "factory_app.tasks.edge_image",
}


def load_task(name: str) -> ModuleType:
    """Import the module of task ``name``; a clear error for unknown names or a missing framework."""
    if name not in TASK_MODULES:
        raise ValueError(f"run-config task: unknown task {name!r} (known: {', '.join(sorted(TASK_MODULES))})")
    try:
        return importlib.import_module(TASK_MODULES[name])
    except ImportError as error:
        raise RuntimeError(f"task {name!r} needs a package this environment lacks: {error}") from error
