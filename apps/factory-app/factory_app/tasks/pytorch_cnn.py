"""A small PyTorch CNN on the synthetic 16x16 patterns (tasks/synthetic.py); uses a GPU when there is one."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from factory_app.tasks import synthetic, torchnet

load_data = synthetic.load_data


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(16 * 4 * 4, synthetic.CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(images), 1))


def _tensors(data: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = data
    # NHWC (as generated) -> NCHW (as torch convolutions want)
    return torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy()), torch.from_numpy(labels)


def initial_arrays(config: dict) -> list[np.ndarray]:
    return torchnet.arrays_of(torchnet.network(SmallCNN, None, int(config["seed"])))


def train(arrays: list[np.ndarray], data: tuple, config: dict, global_arrays: list[np.ndarray]) -> tuple:
    device = torchnet.device()
    network = torchnet.network(SmallCNN, arrays, int(config["seed"]))
    anchor = [torch.from_numpy(np.array(a)).to(device) for a in global_arrays]
    mu = float(config.get("proximal-mu", 0.0))
    optimiser = torch.optim.SGD(network.parameters(), lr=float(config["learning-rate"]), momentum=0.9)
    images, labels = _tensors(data)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(int(config["seed"])),
    )
    criterion = nn.CrossEntropyLoss()
    network.train()
    parameter_names = [name for name, _ in network.named_parameters()]
    state_keys = list(network.state_dict().keys())
    anchors = {name: anchor[state_keys.index(name)] for name in parameter_names}
    for _ in range(int(config["local-epochs"])):
        for batch_images, batch_labels in loader:
            optimiser.zero_grad()
            loss = criterion(network(batch_images.to(device)), batch_labels.to(device))
            if mu > 0.0:
                proximal = sum(
                    torch.sum((parameter - anchors[name]) ** 2)
                    for name, parameter in network.named_parameters()
                )
                loss = loss + mu / 2.0 * proximal
            loss.backward()
            optimiser.step()
    train_loss, train_accuracy = _measure(network, data)
    return (
        torchnet.arrays_of(network),
        len(labels),
        {"train_loss": train_loss, "train_accuracy": train_accuracy},
    )


def _measure(network: SmallCNN, data: tuple) -> tuple[float, float]:
    device = torchnet.device()
    images, labels = _tensors(data)
    network.eval()
    with torch.no_grad():
        logits = network(images.to(device))
        loss = nn.functional.cross_entropy(logits, labels.to(device)).item()
        accuracy = (logits.argmax(1).cpu() == labels).float().mean().item()
    return float(loss), float(accuracy)


def evaluate(arrays: list[np.ndarray], data: tuple, config: dict) -> tuple:
    loss, accuracy = _measure(torchnet.network(SmallCNN, arrays, int(config["seed"])), data)
    return len(data[1]), {"eval_loss": loss, "eval_accuracy": accuracy}
