"""Architecture configs for the built-in tiny models: plain data, no ComfyUI or torch import.

Two sizes per family:
- ``tiny``: the smallest model that keeps every structural feature (down/up levels with and without
  attention, cross-attention, a mid block; for SDXL the two text encoders and the pooled ADM path).
  A sampling step takes milliseconds on a CPU; used by the tests and the demo.
- ``bench``: the reference sizes of the speed benchmarks, sized so one training step takes ~0.5 s on
  2 CPU cores. SD1.5-shaped: model_channels 64, levels [1, 2, 4], one transformer per level, context
  128. SDXL-shaped: the same widths with SDXL's layout (no attention at full resolution, two text
  encoders concatenated to context 256, linear transformer projections, pooled text + size embedding
  through the ADM input).

And ``sd15-full``: SD1.5's real UNet and text-encoder sizes (about 860M + 123M parameters, 512 px), random
weights, for speed benchmarks on a GPU; far too slow for a CPU.
"""

from dataclasses import dataclass, field

# SDXL's ADM vector is the pooled text embedding followed by six 256-wide size/crop embeddings.
SDXL_SIZE_EMBEDDING_WIDTH = 6 * 256


@dataclass(frozen=True)
class TextEncoderConfig:
    """Overrides for ComfyUI's CLIP text-model json config (comfy/sd1_clip_config.json keys)."""

    hidden_size: int
    num_hidden_layers: int = 3  # SDXL reads the penultimate layer, so at least 3
    num_attention_heads: int = 2
    projection_dim: int | None = None  # defaults to hidden_size

    def as_comfy_overrides(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": 4 * self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "projection_dim": self.projection_dim or self.hidden_size,
        }


@dataclass(frozen=True)
class TinyModelConfig:
    family: str  # "sd15" | "sdxl": which ComfyUI supported_models class and text encoders
    model_channels: int
    channel_mult: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # per level (SD1.5: one per level; SDXL: none at level 0)
    head_channels: int
    text_encoders: dict[str, TextEncoderConfig]  # "l" (and "g" for SDXL)
    vae_channels: int = 32
    vae_channel_mult: tuple[int, ...] = (1, 1, 2, 2)  # one downsampling between levels: 4 levels = 8x
    default_resolution: int = 64  # pixels; latents are 1/(2 ** (len(vae_channel_mult) - 1)) of it
    extra: dict = field(default_factory=dict)

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae_channel_mult) - 1)

    @property
    def context_dim(self) -> int:
        return sum(te.hidden_size for te in self.text_encoders.values())

    @property
    def adm_in_channels(self) -> int | None:
        if self.family != "sdxl":
            return None
        g = self.text_encoders["g"]
        return (g.projection_dim or g.hidden_size) + SDXL_SIZE_EMBEDDING_WIDTH

    def unet_config(self) -> dict:
        """The dict ComfyUI's model_detection would produce for a checkpoint of this shape."""
        levels = len(self.channel_mult)
        depth = list(self.transformer_depth)
        return {
            "image_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": self.model_channels,
            "num_res_blocks": [1] * levels,
            "channel_mult": list(self.channel_mult),
            "transformer_depth": depth,
            # output blocks: (num_res_blocks + 1) per level, same depth as the matching input level
            "transformer_depth_output": [d for d in depth for _ in range(2)],
            "transformer_depth_middle": depth[-1] if depth[-1] > 0 else 1,
            "context_dim": self.context_dim,
            "use_spatial_transformer": True,
            "legacy": False,
            "use_linear_in_transformer": self.family == "sdxl",
            "adm_in_channels": self.adm_in_channels,
            **({"num_classes": "sequential"} if self.family == "sdxl" else {}),
            "use_temporal_attention": False,
            "use_temporal_resblock": False,
            "num_heads": -1,
            "num_head_channels": self.head_channels,
            **self.extra,
        }

    def vae_ddconfig(self) -> dict:
        """comfy.ldm.models.autoencoder.AutoencoderKL ddconfig (default: 3 downsamplings = the real 8x factor)."""
        return {
            "double_z": True,
            "z_channels": 4,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": self.vae_channels,
            "ch_mult": list(self.vae_channel_mult),
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        }


CONFIGS: dict[str, TinyModelConfig] = {
    "sd15-tiny": TinyModelConfig(
        family="sd15",
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(1, 1, 0),
        head_channels=16,
        text_encoders={"l": TextEncoderConfig(hidden_size=32)},
    ),
    "sdxl-tiny": TinyModelConfig(
        family="sdxl",
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(0, 1, 1),
        head_channels=16,
        text_encoders={"l": TextEncoderConfig(hidden_size=32), "g": TextEncoderConfig(hidden_size=32)},
    ),
    "sd15-bench": TinyModelConfig(
        family="sd15",
        model_channels=64,
        channel_mult=(1, 2, 4),
        transformer_depth=(1, 1, 1),
        head_channels=32,
        text_encoders={"l": TextEncoderConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)},
        default_resolution=256,
    ),
    "sdxl-bench": TinyModelConfig(
        family="sdxl",
        model_channels=64,
        channel_mult=(1, 2, 4),
        transformer_depth=(0, 1, 2),
        head_channels=32,
        text_encoders={"l": TextEncoderConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4),
                       "g": TextEncoderConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4)},
        default_resolution=256,
    ),
    "sd15-full": TinyModelConfig(
        family="sd15",
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        transformer_depth=(1, 1, 1, 0),
        head_channels=40,
        text_encoders={"l": TextEncoderConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)},
        default_resolution=512,
        # two res blocks per level, as the real checkpoint (depths given per block)
        extra={"num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1},
    ),
    # the drift benchmark's pretrained model (shapes/): 32x32 pictures, a 4x VAE (8x8 latents), a small
    # text transformer left at its seeded random init (the UNet learns to read it)
    "drift-bench": TinyModelConfig(
        family="sd15",
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(1, 1, 1),
        head_channels=16,
        text_encoders={"l": TextEncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)},
        vae_channels=32,
        vae_channel_mult=(1, 2, 2),
        default_resolution=32,
    ),
}
