"""Image classification with a small PyTorch CNN for 8x8 grey images; trains on the GPU when torch sees
one (CUDA), else on the CPU.

Demo data: scikit-learn's bundled handwritten digits (load_digits: 1797 images of 8x8 pixels, 10
classes; ships with scikit-learn, no download), partitioned across nodes. On an image without
scikit-learn the demo falls back to the synthetic 16x16 patterns of synthetic.py, pooled to 8x8 (the
START/ROUND metrics do not change shape; ``eval_accuracy`` is measured on whichever demo ran). Real data:
node config ``data-path`` (localdata.py): NPZ with ``x`` [n, 8, 8] (or [n, 8, 8, 1], or [n, 64]) and
``y`` (class indices 0..9), or a CSV of 64 pixel columns and a ``label`` column. Pixels are scaled by the
node's largest value to 0..1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from factory_app.tasks import localdata, synthetic, torchnet

SIDE = 8
CLASSES = 10


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, CLASSES)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def _demo(partition_id: int, num_partitions: int, config: dict) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        (train_x, train_y), (test_x, test_y) = synthetic.load_data(partition_id, num_partitions, config)
        images = np.concatenate([train_x, test_x])[..., 0]
        pooled = images.reshape(len(images), SIDE, 2, SIDE, 2).mean(axis=(2, 4))
        return pooled, np.concatenate([train_y, test_y])
    images, labels = load_digits(return_X_y=True)
    mine = localdata.partition(len(labels), partition_id, num_partitions, int(config["seed"]))
    return images[mine], labels[mine]


def load_data(partition_id: int, num_partitions: int, config: dict) -> tuple[tuple, tuple]:
    if config.get("data-path"):
        images, labels = localdata.load(str(config["data-path"]))
        if labels is None:
            raise localdata.DataError(f"{config['data-path']}: the image-cnn task needs labels (y / label)")
    else:
        images, labels = _demo(partition_id, num_partitions, config)
    images = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    if images.shape[1] != SIDE * SIDE:
        raise localdata.DataError(f"image-cnn: images must have {SIDE}x{SIDE} pixels, got {images.shape[1]}")
    if labels.min() < 0 or labels.max() >= CLASSES:
        raise localdata.DataError(f"image-cnn: labels must be within 0..{CLASSES - 1}")
    images -= images.min()
    images /= max(float(images.max()), 1e-6)
    images = images.reshape(len(images), 1, SIDE, SIDE)
    return localdata.split(images, labels.astype(np.int64), int(config["seed"]))


def initial_arrays(config: dict) -> list[np.ndarray]:
    return torchnet.arrays_of(torchnet.network(DigitsCNN, None, int(config["seed"])))


def _measure(network: DigitsCNN, data: tuple) -> tuple[float, float]:
    images, labels = (torch.from_numpy(part) for part in data)
    network.eval()
    with torch.no_grad():
        logits = network(images.to(torchnet.device()))
        loss = nn.functional.cross_entropy(logits, labels.to(torchnet.device())).item()
        accuracy = (logits.argmax(1).cpu() == labels).float().mean().item()
    return float(loss), float(accuracy)


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    run_on = torchnet.device()
    network = torchnet.network(DigitsCNN, arrays, int(config["seed"]))
    # Adam restarts every round (its moments are not averaged); 0.2 x the run-config rate (0.01 by default)
    optimiser = torch.optim.Adam(network.parameters(), lr=float(config["learning-rate"]) * 0.2)
    mu = float(config.get("proximal-mu", 0.0))
    anchors = [torch.from_numpy(np.array(a)).to(run_on) for a in global_arrays]
    names = list(network.state_dict().keys())
    parameters = dict(network.named_parameters())
    images, labels = (torch.from_numpy(part) for part in data)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(int(config["seed"])),
    )
    network.train()
    for _ in range(3 * int(config["local-epochs"])):  # 3 passes: a node may hold only ~150 images
        for batch_images, batch_labels in loader:
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(network(batch_images.to(run_on)), batch_labels.to(run_on))
            if mu > 0.0:
                loss = loss + mu / 2.0 * sum(
                    torch.sum((parameters[name] - anchors[index]) ** 2)
                    for index, name in enumerate(names)
                    if name in parameters
                )
            loss.backward()
            optimiser.step()
    loss_value, accuracy = _measure(network, data)
    return torchnet.arrays_of(network), len(data[1]), {"train_loss": loss_value, "train_accuracy": accuracy}


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    loss, accuracy = _measure(torchnet.network(DigitsCNN, arrays, int(config["seed"])), data)
    return len(data[1]), {"eval_loss": loss, "eval_accuracy": accuracy}
