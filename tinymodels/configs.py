"""Architecture configs for the built-in tiny models: plain data, no ComfyUI or torch import.

UNet families (SD1.5, SDXL: `TinyModelConfig`) and DiT families (SD3.5, Flux.1: `TinyDiTConfig`), two sizes each:
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
    latent_channels = 4
    largest_resolution = None  # a UNet places any image size (TinyDiTConfig: SD3's position grid limits it)

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
        return vae_ddconfig(self)


def vae_ddconfig(cfg) -> dict:
    """An AutoencoderKL ddconfig of `cfg`'s width, depth and latent channels (4 for the UNets, 16 for the DiTs)."""
    return {
        "double_z": True,
        "z_channels": cfg.latent_channels,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": cfg.vae_channels,
        "ch_mult": list(cfg.vae_channel_mult),
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


@dataclass(frozen=True)
class T5Config:
    """Overrides for ComfyUI's T5-XXL json config (comfy/text_encoders/t5_config_xxl.json keys): the tokenizer
    and vocabulary stay T5's, the transformer shrinks."""

    d_model: int
    num_layers: int = 1
    num_heads: int = 2
    d_kv: int = 16
    d_ff: int = 64

    def as_comfy_overrides(self) -> dict:
        return {"d_model": self.d_model, "num_layers": self.num_layers, "num_heads": self.num_heads,
                "d_kv": self.d_kv, "d_ff": self.d_ff}


# SD3's text encoder pads CLIP-L+G to 4096 channels and joins T5's tokens after them (comfy sd3_clip), so its T5
# keeps T5-XXL's width: one layer, but the 32128 × 4096 embedding (131M numbers) comes with it
SD3_CONTEXT_WIDTH = 4096


@dataclass(frozen=True)
class TinyDiTConfig:
    """A rectified-flow transformer of ComfyUI's SD3 (MMDiT) or Flux.1 classes.

    family "sd3": `supported_models.SD3`, joint blocks; ComfyUI derives the width from the depth (64 · depth,
    one 64-wide head per block), as its checkpoint detector does, so only `depth` sets the size; SD3.5's
    q/k RMS norms and MMDiT-X's second self-attention (in `dual_attention_blocks`) are on.
    family "flux": `supported_models.Flux` (guidance-distilled "dev": a guidance embedding) or `FluxSchnell`
    (`guidance_embed=False`: no guidance input, sampled with real CFG); `depth` double-stream blocks and
    `depth_single_blocks` single-stream blocks of width `hidden_size`, RoPE over (index, row, column) axes
    `axes_dim`, whose sum is the head width.
    """

    family: str  # "sd3" | "flux"
    depth: int
    text_encoders: dict  # "l", "g" (SD3) -> TextEncoderConfig; "t5xxl" -> T5Config
    hidden_size: int = 0  # flux only
    num_heads: int = 0  # flux only
    depth_single_blocks: int = 0  # flux only
    axes_dim: tuple[int, ...] = ()  # flux only
    guidance_embed: bool = False  # flux only
    dual_attention_blocks: tuple[int, ...] = ()  # sd3 only
    pos_embed_max_size: int = 16  # sd3 only: the largest latent side / 2 it can place
    vae_channels: int = 32
    vae_channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    default_resolution: int = 64
    latent_channels = 16

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae_channel_mult) - 1)

    @property
    def width(self) -> int:
        return 64 * self.depth if self.family == "sd3" else self.hidden_size

    @property
    def largest_resolution(self) -> int | None:
        """The largest image side in pixels the model can place (SD3: its position-embedding grid of 2×2 latent
        patches); None where there is no such limit (Flux's RoPE)."""
        return self.pos_embed_max_size * 2 * self.vae_downscale if self.family == "sd3" else None

    def unet_config(self) -> dict:
        """The diffusion-model config ComfyUI's model detection reads from a checkpoint of this shape."""
        if self.family == "sd3":
            l, g = self.text_encoders["l"], self.text_encoders["g"]
            return {
                "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": self.depth, "input_size": None,
                "adm_in_channels": (l.hidden_size) + (g.projection_dim or g.hidden_size),
                "context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": SD3_CONTEXT_WIDTH, "out_features": self.width}},
                "num_patches": self.pos_embed_max_size ** 2, "pos_embed_max_size": self.pos_embed_max_size,
                "qk_norm": "rms", "pos_embed_scaling_factor": None,
                "x_block_self_attn_layers": list(self.dual_attention_blocks),
            }
        return {
            "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
            "vec_in_dim": self.text_encoders["l"].hidden_size, "context_in_dim": self.text_encoders["t5xxl"].d_model,
            "hidden_size": self.hidden_size, "mlp_ratio": 4.0, "num_heads": self.num_heads, "depth": self.depth,
            "depth_single_blocks": self.depth_single_blocks, "axes_dim": list(self.axes_dim), "theta": 10000,
            "qkv_bias": True, "guidance_embed": self.guidance_embed,
        }

    def vae_ddconfig(self) -> dict:
        return vae_ddconfig(self)


def _flux(guidance_embed: bool, hidden: int, depth: int, single: int, axes: tuple, resolution: int, text: int):
    return TinyDiTConfig(
        family="flux", depth=depth, depth_single_blocks=single, hidden_size=hidden, num_heads=hidden // sum(axes),
        axes_dim=axes, guidance_embed=guidance_embed, default_resolution=resolution,
        text_encoders={"l": TextEncoderConfig(hidden_size=text), "t5xxl": T5Config(d_model=text)},
    )


def _sd3(depth: int, resolution: int, text: int):
    return TinyDiTConfig(
        family="sd3", depth=depth, dual_attention_blocks=(0,), default_resolution=resolution,
        pos_embed_max_size=max(16, resolution // 16),
        text_encoders={"l": TextEncoderConfig(hidden_size=text), "g": TextEncoderConfig(hidden_size=text),
                       "t5xxl": T5Config(d_model=SD3_CONTEXT_WIDTH, num_heads=1, d_ff=32)},
    )


CONFIGS: dict[str, TinyModelConfig | TinyDiTConfig] = {
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
    # SD3.5-shaped MMDiT (two joint blocks, width 128, the first with MMDiT-X's second attention) and Flux.1-shaped
    # transformers (two double- and two single-stream blocks of width 64, two 32-wide heads), 16 latent channels
    "sd35-tiny": _sd3(depth=2, resolution=64, text=32),
    "flux-dev-tiny": _flux(True, hidden=64, depth=2, single=2, axes=(8, 12, 12), resolution=64, text=32),
    "flux-tiny": _flux(False, hidden=64, depth=2, single=2, axes=(8, 12, 12), resolution=64, text=32),
    # the speed benchmarks' DiTs: a training step of ~0.5 s on 2 CPU cores at 256 px (32x32 latents, 256 tokens)
    "sd35-bench": _sd3(depth=4, resolution=256, text=128),
    "flux-dev-bench": _flux(True, hidden=256, depth=2, single=4, axes=(16, 24, 24), resolution=256, text=128),
}


def is_dit(name: str) -> bool:
    """True for the transformer (SD3.5, Flux) tiny models."""
    return isinstance(CONFIGS[name], TinyDiTConfig)
