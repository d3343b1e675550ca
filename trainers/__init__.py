"""LoRA training on a ModelPatcher clone: adapters, objective, data, loop, checkpoints, LoRA files."""
