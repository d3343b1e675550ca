"""Peak memory of APT's representation term and its gradient at a real model's sizes, CPU.

    ./driftless python -m driftless.bench.speed.rs_memory [bf16|fp32]

SDXL at 1024 px has 70 self-attention outputs: 10 of [1, 4096, 640] and 60 of [1, 1024, 1280] (210 MB in bf16).
Each is made by an operation that autograd records, as the UNet makes it; then the term is formed and
differentiated, two ways: layer by layer through autograd (the statistics as plain torch operations, which keep
each layer's float32 deviations for backward), and as Train LoRA does it (`grouped_channel_stats`). Prints the
peak of live tensor bytes of each (bench/speed/peak.py).
"""

import sys

import torch

from ...trainers.regularizers.apt import channel_stats, grouped_channel_stats, representation_distance
from .peak import peak_tensor_bytes

SDXL_1024 = [(1, 4096, 640)] * 10 + [(1, 1024, 1280)] * 60


def main() -> None:
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    if len(sys.argv) > 2 or sys.argv[1:] and sys.argv[1] not in dtypes:
        raise SystemExit("usage: python -m driftless.bench.speed.rs_memory [bf16|fp32]  (default bf16)")
    dtype = dtypes[sys.argv[1] if len(sys.argv) > 1 else "bf16"]
    g = torch.Generator().manual_seed(0)
    bases = [torch.randn(s, generator=g).to(dtype) for s in SDXL_1024]
    references = [torch.randn(s, generator=g).to(dtype) for s in SDXL_1024]
    scale = torch.ones((), requires_grad=True)

    def layer_by_layer():
        trained = [channel_stats(b * scale.to(dtype)) for b in bases]  # each reduced as the forward makes it
        with torch.no_grad():
            frozen = [channel_stats(r) for r in references]
        term = sum(((mt - mr) ** 2).mean() + ((st - sr) ** 2).mean() for (mt, st), (mr, sr) in zip(trained, frozen))
        term.backward()

    def stacked():
        with torch.no_grad():
            frozen = grouped_channel_stats(references)
        features = [b * scale.to(dtype) for b in bases]  # held until the loss, as APT holds them
        term = representation_distance(grouped_channel_stats(features), frozen)
        del features
        term.backward()

    features_mb = sum(b.numel() * b.element_size() for b in bases) / 1e6
    print(f"SDXL 1024 px self-attention outputs, {dtype}: {features_mb:.0f} MB")
    for name, run in (("layer by layer, autograd", layer_by_layer), ("stacked (Train LoRA)", stacked)):
        run()  # warm
        print(f"{name}: peak {peak_tensor_bytes(run) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
