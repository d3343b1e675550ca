"""Personalization guidance: the weak model (base + LoRA at strength s) on the null prompt as CFG's unconditional branch."""
