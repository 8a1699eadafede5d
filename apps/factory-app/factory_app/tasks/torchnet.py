"""What the PyTorch tasks (pytorch_cnn.py, image_cnn.py) share: the device they run on, and a network's
weights as the list of NumPy arrays Flower carries between rounds (in ``state_dict`` order)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import nn

Network = TypeVar("Network", bound=nn.Module)


def device() -> torch.device:
    """The GPU when torch sees one (CUDA), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def network(kind: type[Network], arrays: list[np.ndarray] | None, seed: int) -> Network:
    """A ``kind`` network on :func:`device`: its initial weights drawn from ``seed``, then ``arrays`` (when
    given) loaded in their place."""
    torch.manual_seed(seed)
    built = kind()
    if arrays is not None:
        keys = list(built.state_dict().keys())
        built.load_state_dict(
            {key: torch.from_numpy(np.array(a)) for key, a in zip(keys, arrays, strict=True)}
        )
    return built.to(device())


def arrays_of(built: nn.Module) -> list[np.ndarray]:
    """The weights of ``built`` as NumPy arrays, in ``state_dict`` order (what :func:`network` loads)."""
    return [value.detach().cpu().numpy() for value in built.state_dict().values()]
