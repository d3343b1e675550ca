"""A small CNN that reads a 32x32 picture's shape and colour, trained on the same generator.

It scores the benchmark: prior drift (does the personalized model still draw the prompted shape and
colour?), text alignment (is "a blue sks" blue?), and through its penultimate features, subject
fidelity and closeness of two pictures (cosine similarity, as DINO features serve in DreamBench).
Training adds noise and blur and, when given the VAE's round trip, shows half of each batch as the VAE decodes it:
samples only ever reach the classifier through the decoder, so that is the picture it must read.
"""

import numpy as np
import torch
from torch import nn

from . import dataset

FEATURES = 128


class ShapeColourNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
            nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.ReLU(),
        )
        self.shape_head = nn.Linear(FEATURES, len(dataset.SHAPES))
        self.colour_head = nn.Linear(FEATURES, len(dataset.COLOURS))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of an IMAGE batch [B, H, W, 3] in [0, 1]."""
        return self.body(images.permute(0, 3, 1, 2) * 2 - 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.shape_head(f), self.colour_head(f)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half the batch (3x3 box) and add a little noise: decoded samples are softer than renders."""
    x = images.permute(0, 3, 1, 2)
    blurred = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(x.shape[0], 1, 1, 1, generator=generator) < 0.5).float()
    x = pick * blurred + (1 - pick) * x
    x = x + 0.04 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def train(steps: int, batch: int, seed: int, log=print, roundtrip=None, roundtrip_share: float = 0.5) -> ShapeColourNet:
    """The classifier on `steps` batches of fresh pictures; `roundtrip(images) -> images` (the VAE's encode then
    decode), when given, replaces a `roundtrip_share` of each batch by its decoded copy before augmentation."""
    torch.manual_seed(seed)
    net = ShapeColourNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    images, pictures = dataset.draw(steps * batch, seed)
    shapes, colours = dataset.labels(pictures)
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        x = images[sl]
        if roundtrip is not None:
            pick = torch.rand(x.shape[0], generator=generator) < roundtrip_share
            if pick.any():
                with torch.no_grad():
                    x = x.clone()
                    x[pick] = roundtrip(x[pick]).float().clamp(0, 1)
        s_logits, c_logits = net(augment(x, generator))
        loss = nn.functional.cross_entropy(s_logits, shapes[sl]) + nn.functional.cross_entropy(c_logits, colours[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[shapes] classifier step {step + 1}/{steps} loss {loss.item():.4f}")
    return net.eval()


@torch.no_grad()
def accuracy(net: ShapeColourNet, n: int = 512, seed: int = 12345) -> dict:
    images, pictures = dataset.draw(n, seed)
    shapes, colours = dataset.labels(pictures)
    s, c = net(images)
    return {"shape": float((s.argmax(1) == shapes).float().mean()), "colour": float((c.argmax(1) == colours).float().mean())}


def load(state: dict) -> ShapeColourNet:
    net = ShapeColourNet()
    net.load_state_dict(state)
    return net.eval()


def predict(net: ShapeColourNet, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        s, c = net(images.float())
    return s.argmax(1).numpy(), c.argmax(1).numpy()
