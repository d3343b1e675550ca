"""Training examples and the seeded stream of mini-batches drawn from them."""

from dataclasses import dataclass, field

import torch


@dataclass
class TrainingData:
    """What the dataset node hands the trainer: VAE latents and their captions, encoded.

    latents: [N, C, h, w] as a LATENT holds them (before the model's latent scaling).
    conditionings: one CONDITIONING per example; null: the CONDITIONING of the empty prompt.
    """

    latents: torch.Tensor
    conditionings: list
    null: list
    captions: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.latents.ndim != 4 or self.latents.shape[0] == 0:
            raise ValueError(f"training latents must be a non-empty [N, C, h, w] batch, got shape {tuple(self.latents.shape)}")
        if len(self.conditionings) != self.latents.shape[0]:
            raise ValueError(f"{self.latents.shape[0]} training images but {len(self.conditionings)} encoded captions")

    def __len__(self) -> int:
        return self.latents.shape[0]


class IndexStream:
    """Example indices in epochs of seeded random permutations; its position is part of the resume state."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order = torch.randperm(n, generator=generator)
        self.cursor = 0

    def take(self, k: int) -> torch.Tensor:
        out = []
        while len(out) < k:
            if self.cursor == self.n:
                self.order, self.cursor = torch.randperm(self.n, generator=self.generator), 0
            out.append(int(self.order[self.cursor]))
            self.cursor += 1
        return torch.tensor(out, dtype=torch.long)

    def state(self) -> dict[str, torch.Tensor]:
        return {"order": self.order.clone(), "cursor": torch.tensor(self.cursor)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state["order"].numel() != self.n:
            raise ValueError(f"the saved data order is for {state['order'].numel()} examples, this dataset has {self.n}")
        self.order, self.cursor = state["order"].clone(), int(state["cursor"])
