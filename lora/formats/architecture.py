"""Which kind of model a LoRA was made for, read from its layer names and shapes (any file convention).

Used only to say something useful when a LoRA does not fit: "this LoRA is for an SDXL-style UNet, the
model is SD1.5". The signs, in the order they are read:
- DiT families by their block names: Flux (double_blocks / single_blocks, single_transformer_blocks, and
  in diffusers names x_embedder / guidance_embedder), SD3 (joint_blocks, context_block, and in diffusers
  names pos_embed.proj, a second attention attn2 in transformer_blocks, or a last block whose text stream
  has q/k/v but no output projection or feed-forward: SD3's context_pre_only block; Flux's have both);
  diffusers transformer_blocks names with none of these signs are "a transformer", which fits either;
- UNets by where attention starts: SD1.x/SD2.x have transformer blocks from the first level on
  (input_blocks.1.1 / down_blocks.0.attentions); SDXL has none there (and an ADM embedding,
  label_emb / add_embedding); a second text encoder's layers (lora_te2_, text_encoder_2) also mean SDXL;
- the cross-attention width (the input width of attn2.to_k) names the member: 768 SD1.x,
  1024 SD2.x, 2048 SDXL, 1280 SDXL refiner.
"""

import re
from dataclasses import dataclass

WIDTHS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL refiner"}
LABELS = {
    "sd1-unet": "an SD1.x/SD2.x-style UNet (attention from the first level on)",
    "sdxl-unet": "an SDXL-style UNet (no attention at the first level)",
    "unet": "a UNet",
    "flux": "a Flux-style transformer (double and single blocks)",
    "sd3": "an SD3-style transformer (joint blocks)",
    "dit": "a transformer (DiT) model",
}


@dataclass(frozen=True)
class Architecture:
    kind: str | None  # a LABELS key, or None when nothing is recognised
    width: int | None = None  # cross-attention width, when a LoRA layer shows it

    def describe(self) -> str:
        text = LABELS.get(self.kind, "an architecture Driftless does not recognise")
        if self.width is not None:
            member = WIDTHS.get(self.width)
            text += f", cross-attention width {self.width}" + (f" ({member})" if member else "")
        return text

    def differs_from(self, other: "Architecture") -> bool:
        """True only when both are known and disagree (kind, or width where both show one)."""
        if self.kind is None or other.kind is None:
            return False
        if {self.kind, other.kind} <= {"unet", "sd1-unet", "sdxl-unet"} and "unet" in (self.kind, other.kind):
            kinds_differ = False  # a bare "UNet" is compatible with either layout
        elif {self.kind, other.kind} <= {"dit", "flux", "sd3"} and "dit" in (self.kind, other.kind):
            kinds_differ = False  # so is a bare "transformer" with Flux and SD3
        else:
            kinds_differ = self.kind != other.kind
        widths_differ = self.width is not None and other.width is not None and self.width != other.width
        return kinds_differ or widths_differ


def _normal(name: str) -> str:
    """One spelling for LDM, diffusers and kohya names: separators as '.', prefixes dropped."""
    name = re.sub(r"^(lora_unet_|lora_te\d?_|lora_transformer_|diffusion_model\.|unet\.|transformer\.|base_model\.model\.)", "", name)
    return "." + name.replace("_", ".") + "."


def _sd3_second_attention(joined: str) -> bool:
    """diffusers names with `attn` and `attn2` in transformer_blocks: SD3.5's MMDiT-X blocks (PixArt-style
    blocks name theirs attn1 and attn2)."""
    return bool(re.search(r"^\.transformer\.blocks\.\d+\.attn2\.", joined, re.MULTILINE)
                and re.search(r"^\.transformer\.blocks\.\d+\.attn\.", joined, re.MULTILINE))


def _sd3_last_text_block(normal: list[str]) -> bool:
    """diffusers names where the last block's text stream has q/k/v LoRAs but no output projection or
    feed-forward while an earlier block has them: SD3's last joint block (context_pre_only)."""
    qkv, rest = set(), set()
    for name in normal:
        match = re.match(r"^\.transformer\.blocks\.(\d+)\.(attn\.add\.[qkv]\.proj|attn\.to\.add\.out|ff\.context)\.", name)
        if match:
            (qkv if match[2].startswith("attn.add.") else rest).add(int(match[1]))
    return bool(qkv and rest) and max(qkv) not in rest and max(qkv) > max(rest)


def guess(names, cross_attention_widths: dict[str, int] | None = None, text_encoder_keys=()) -> Architecture:
    """The architecture that layer `names` (any convention) belong to; `cross_attention_widths` maps
    names to the input width of their layer, used for attn2.to_k."""
    normal = [_normal(n) for n in names]
    joined = "\n".join(normal)
    width = None
    for name, w in (cross_attention_widths or {}).items():
        if ".attn2.to.k." in _normal(name):
            width = w
            break
    if re.search(r"\.(double\.blocks|single\.blocks|single\.transformer\.blocks|guidance\.embedder)\.", joined) or \
            re.search(r"^\.x\.embedder\.$", joined, re.MULTILINE):  # Flux's img_in (SD3's x_embedder is x_embedder.proj)
        return Architecture("flux")
    if re.search(r"\.(joint\.blocks|context\.block|pos\.embed\.proj)\.", joined) or \
            _sd3_second_attention(joined) or _sd3_last_text_block(normal):
        return Architecture("sd3")
    second_text_encoder = any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in text_encoder_keys)
    unet = re.search(r"\.(input\.blocks|down\.blocks|middle\.block|mid\.block|output\.blocks|up\.blocks)\.", joined)
    if unet:
        if re.search(r"\.(input\.blocks\.1\.1|down\.blocks\.0\.attentions)\.", joined):
            return Architecture("sd1-unet", width)
        has_attention = re.search(r"\.(attn1|attn2|attentions|transformer\.blocks)\.", joined)
        if has_attention or second_text_encoder or re.search(r"\.(label\.emb|add\.embedding)\.", joined):
            return Architecture("sdxl-unet", width)
        return Architecture("unet", width)
    if second_text_encoder:
        return Architecture("sdxl-unet", width)
    if re.search(r"\.transformer\.blocks\.", joined):
        return Architecture("dit", width)
    return Architecture(None, width)
