"""Seeded, random-initialised SD1.5- and SDXL-shaped models built from config with ComfyUI's own classes.

They need no weights, build in well under a second, and behave like the real architectures (same
UNet code, latent format, noise schedule, tokenizer and conditioning path), so the demo and the tests
exercise exactly what a user's checkpoint would. See `configs.py` for the shapes and `build.py` for
the ComfyUI seam.
"""
