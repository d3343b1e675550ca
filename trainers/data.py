"""Training examples and the seeded stream of mini-batches drawn from them."""

from dataclasses import dataclass, field

import torch


@dataclass
class TrainingData:
    """What the dataset node hands the trainer: VAE latents and their captions, encoded.

    latents: [N, C, h, w] as a LATENT holds them (before the model's latent scaling); photos of several sizes
        (aspect-ratio buckets) as a list of [C, h, w], one per example (a list of one size becomes a batch).
    conditionings: one CONDITIONING per example; null: the CONDITIONING of the empty prompt.
    loss_weights: None, or one per example: None (every latent pixel weighs 1) or a [1, h, w] weight map at the
        latent's resolution (masked loss: 1 on the subject, the unmasked weight elsewhere).
    repeats: None, or how many times each example counts per epoch (kohya's N_name folders).
    """

    latents: torch.Tensor | list
    conditionings: list
    null: list
    captions: list[str] = field(default_factory=list)
    loss_weights: list | None = None
    repeats: list[int] | None = None

    def __post_init__(self):
        if isinstance(self.latents, (list, tuple)):
            if not self.latents or any(t.ndim != 3 for t in self.latents):
                raise ValueError("training latents given one per example must be a non-empty list of [C, h, w]")
            if len({tuple(t.shape) for t in self.latents}) == 1:
                self.latents = torch.stack(list(self.latents))
            else:
                self.latents = list(self.latents)
        if not isinstance(self.latents, list) and (self.latents.ndim != 4 or self.latents.shape[0] == 0):
            raise ValueError(f"training latents must be a non-empty [N, C, h, w] batch, got shape {tuple(self.latents.shape)}")
        if len(self.conditionings) != len(self):
            raise ValueError(f"{len(self)} training images but {len(self.conditionings)} encoded captions")
        if len({s[0] for s in self.shapes}) != 1:
            raise ValueError("training latents have different channel counts: encode every photo with the same VAE")
        if self.loss_weights is not None:
            if len(self.loss_weights) != len(self):
                raise ValueError(f"{len(self)} training images but {len(self.loss_weights)} loss weight maps")
            for i, (w, shape) in enumerate(zip(self.loss_weights, self.shapes)):
                if w is not None and tuple(w.shape) != (1, *shape[1:]):
                    raise ValueError(f"the loss weight map of example {i} is {tuple(w.shape)}, its latent {shape}")
            if all(w is None for w in self.loss_weights):
                self.loss_weights = None
        if self.repeats is not None:
            if len(self.repeats) != len(self) or any(int(r) < 1 for r in self.repeats):
                raise ValueError("repeats need one count >= 1 per training image")
            self.repeats = [int(r) for r in self.repeats]
            if all(r == 1 for r in self.repeats):
                self.repeats = None

    def __len__(self) -> int:
        return len(self.latents) if isinstance(self.latents, list) else self.latents.shape[0]

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """Each example's latent shape (C, h, w)."""
        if isinstance(self.latents, list):
            return [tuple(t.shape) for t in self.latents]
        return [tuple(self.latents.shape[1:])] * self.latents.shape[0]

    @property
    def channels(self) -> int:
        return self.shapes[0][0]

    @property
    def preview_shape(self) -> tuple[int, int, int]:
        """The latent shape most examples have (the first such on a tie): the size of validation images."""
        shapes = self.shapes
        return max(dict.fromkeys(shapes), key=shapes.count)

    def same_size_latents(self, purpose: str) -> torch.Tensor:
        """The latents as one [N, C, h, w] batch; photos of several sizes are refused, naming `purpose`."""
        if isinstance(self.latents, list):
            sizes = sorted({f"{w}x{h}" for _, h, w in self.shapes})
            raise ValueError(f"{purpose} needs photos of one size, this training data has {len(sizes)} latent sizes "
                             f"({', '.join(sizes)}): load the photos without aspect-ratio buckets")
        return self.latents

    def stream(self, batch_size: int, generator: torch.Generator):
        """The run's stream of example indices: seeded epochs over the examples (one size, no repeats: IndexStream,
        batches may span epochs), or batches within each size (BucketStream, repeats counted)."""
        from .buckets import BucketStream, group_by_shape

        buckets = group_by_shape(self.shapes)
        if len(buckets) == 1 and self.repeats is None:
            return IndexStream(len(self), generator)
        return BucketStream(buckets, batch_size, generator, self.repeats)


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
        if "batch_sizes" in state:
            raise ValueError("the saved data order was drawn in aspect-ratio buckets (photos of several sizes or "
                             "repeats), this dataset has neither: resume with the data it was trained on")
        if state["order"].numel() != self.n:
            raise ValueError(f"the saved data order is for {state['order'].numel()} examples, this dataset has {self.n}")
        self.order, self.cursor = state["order"].clone(), int(state["cursor"])
