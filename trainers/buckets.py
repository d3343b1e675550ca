"""Aspect-ratio buckets: photos of mixed sizes train near their own aspect ratio at one pixel budget.

A bucket is a training size (width, height), both multiples of `step`, with width x height at most the budget
(resolution²) and as close to it as the step allows. Each photo goes to the bucket whose aspect ratio is nearest
its own (in log ratio, so 2:1 and 1:2 are equally far from 1:1), is scaled to cover it and centre-cropped. The idea
is NovelAI's aspect-ratio bucketing (as kohya's sd-scripts and OneTrainer train); the bucket list here is our own:
one bucket per width on the step grid, the tallest height that keeps the budget.

`BucketStream` draws mini-batches within buckets: each epoch shuffles every bucket's examples (repeats counted),
cuts them into batches of the batch size (the last one of a bucket may be smaller), and shuffles the batches. All
draws come from the run's generator, and the epoch's plan with its cursor is the resume state, so a resumed run
takes exactly the batches an uninterrupted one would.
"""

import math

import torch

MAX_ASPECT = 2.0  # the widest bucket is 2:1 (and the tallest 1:2); wider photos are cropped to it


def bucket_sizes(resolution: int, step: int = 64, max_aspect: float = MAX_ASPECT) -> list[tuple[int, int]]:
    """Every (width, height) on the `step` grid with width x height <= resolution², each width with its tallest
    height, and neither side more than `max_aspect` times the other; ordered by width."""
    if resolution < step or step < 1:
        raise ValueError(f"the resolution ({resolution} px) must be at least the bucket step ({step} px)")
    area = resolution * resolution
    sizes = []
    for width in range(step, area // step + 1, step):
        height = area // width // step * step
        if height >= step and max(width, height) <= max_aspect * min(width, height):
            sizes.append((width, height))
    return sizes


def nearest_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest width:height in log ratio; on a tie the larger bucket."""
    target = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - target), -s[0] * s[1]))


def group_by_shape(shapes: list[tuple]) -> list[list[int]]:
    """Example indices grouped by shape, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


class BucketStream:
    """Mini-batches drawn within buckets, in seeded epochs; `state`/`load_state` make a resume exact.

    buckets: example indices per bucket; repeats: how often each example counts per epoch (1 if None).
    """

    def __init__(self, buckets: list[list[int]], batch_size: int, generator: torch.Generator,
                 repeats: list[int] | None = None):
        self.batch_size, self.generator = batch_size, generator
        self.buckets = [[i for i in bucket for _ in range(1 if repeats is None else repeats[i])] for bucket in buckets]
        self.bucket_of = {i: k for k, bucket in enumerate(buckets) for i in bucket}
        self.count = sum(len(bucket) for bucket in self.buckets)
        self._new_epoch()

    def _new_epoch(self) -> None:
        batches = []
        for members in self.buckets:
            shuffled = [members[int(j)] for j in torch.randperm(len(members), generator=self.generator)]
            batches += [shuffled[s:s + self.batch_size] for s in range(0, len(shuffled), self.batch_size)]
        self.batches = [batches[int(j)] for j in torch.randperm(len(batches), generator=self.generator)]
        self.cursor = 0

    def take(self, k: int) -> torch.Tensor:
        """The next batch (its size is `k` = the batch size, or fewer at the end of a bucket)."""
        if k != self.batch_size:
            raise ValueError(f"this stream cuts batches of {self.batch_size}, not {k}")
        if self.cursor == len(self.batches):
            self._new_epoch()
        batch = self.batches[self.cursor]
        self.cursor += 1
        return torch.tensor(batch, dtype=torch.long)

    def state(self) -> dict[str, torch.Tensor]:
        return {"order": torch.tensor([i for batch in self.batches for i in batch], dtype=torch.long),
                "batch_sizes": torch.tensor([len(batch) for batch in self.batches], dtype=torch.long),
                "cursor": torch.tensor(self.cursor)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "batch_sizes" not in state:
            raise ValueError("the saved data order was drawn from photos of one size, this dataset has several sizes "
                             "(aspect-ratio buckets): resume with the data it was trained on")
        order, sizes = state["order"].tolist(), state["batch_sizes"].tolist()
        if len(order) != self.count:
            raise ValueError(f"the saved data order is for {len(order)} examples (repeats counted), this dataset has "
                             f"{self.count}")
        batches, start = [], 0
        for size in sizes:
            batches.append(order[start:start + size])
            start += size
        if any(i not in self.bucket_of or len({self.bucket_of[j] for j in batch}) != 1 or len(batch) > self.batch_size
               for batch in batches for i in batch):
            raise ValueError("the saved data order does not fit this dataset's buckets: resume with the data it was "
                             "trained on")
        self.batches, self.cursor = batches, int(state["cursor"])
