"""The DiT families' blocks as the regularizers see them: where each block's image tokens are, and the text-key
block of its joint attention.

A DiT (SD3's MMDiT, Flux) has no cross-attention and no separate self-attention: each block runs one joint
attention over the text tokens and the image tokens together, and carries an image stream from block to block.
ComfyUI lets a patch replace a whole block (`transformer_options["patches_replace"]["dit"][(kind, i)]`, called
with the block's inputs and `original_block`) and intercept every attention call inside it
(`transformer_options["optimized_attention_override"]`, called as `override(func, q, k, v, heads, …)` on ComfyUI
0.3.75 and 0.33.0 alike). `DiTFamily` says, per family, which blocks there are, how to run one, where its text and
image tokens sit in the joint sequence and which tensor is its image-stream output; the capturing itself is one
code path (apt.py). Families, as ComfyUI builds them (comfy/ldm/modules/diffusionmodules/mmdit.py,
comfy/ldm/flux/model.py and layers.py):

- **MMDiT** (SD3, SD3.5): `joint_blocks[i]`, replaced as ("double_block", i); joint attention over
  cat(context, x) (text first); the image-stream output is the block's x. Block 0 of SD3.5 (MMDiT-X) has a
  second attention over x alone (`x_block.attn2`), which is not joint and is left alone.
- **Flux** (Flux.1 dev and schnell): `double_blocks[i]` as ("double_block", i), joint attention over
  cat(txt, img) (img first where a block sets `flipped_img_txt`), image-stream output img; `single_blocks[i]` as
  ("single_block", i), one stream x = cat(txt, img) with the text length of the double blocks before it, image
  stream x[:, N_txt:]. Flux's blocks add into the tensor they were given (`img += …`, `x += …`), so a block's
  output is overwritten by the next block: a capture that must outlive the next block is a copy.

Nothing here imports ComfyUI: the model is read through its attributes.
"""

import torch

JOINT_CHUNK_BYTES = 32 << 20  # most bytes of one chunk of joint attention logits [B, H, queries, N] in the map
TEXT_TOKENS_KEY = "driftless_text_tokens"  # transformer_options key: a Flux forward's text length, for its single blocks


class DiTFamily:
    """Where one DiT family keeps its tokens. `blocks` lists the ("double_block" | "single_block", i) keys of
    ComfyUI's "dit" block replacement; for one block's replacement arguments, `tokens` gives the text and image
    slices of the joint attention's sequence and its length, `run` calls the block as the model would (with the
    transformer options given), and `image_stream` takes the image tokens [B, N_img, C] from its output."""

    name = "DiT"
    writes_inputs_in_place = False  # the next block adds into this block's output

    def blocks(self, diffusion_model) -> list[tuple[str, int]]:
        raise NotImplementedError

    def tokens(self, diffusion_model, key: tuple[str, int], args: dict) -> tuple[slice, slice, int]:
        raise NotImplementedError

    def run(self, diffusion_model, key: tuple[str, int], args: dict, extra: dict, options: dict) -> dict:
        return extra["original_block"]({**args, "transformer_options": options})

    def image_stream(self, key: tuple[str, int], out: dict, image: slice) -> torch.Tensor:
        return out["img"]


class MMDiTFamily(DiTFamily):
    name = "SD3 MMDiT"

    def blocks(self, diffusion_model):
        return [("double_block", i) for i in range(len(diffusion_model.joint_blocks))]

    def tokens(self, diffusion_model, key, args):
        text, image = args["txt"].shape[1], args["img"].shape[1]
        return slice(0, text), slice(text, text + image), text + image

    def run(self, diffusion_model, key, args, extra, options):
        """As forward_core_with_concat calls an unreplaced block: ComfyUI's `original_block` for MMDiT leaves out
        `use_checkpoint`, which then defaults to True (a recomputation in backward the model did not ask for)."""
        txt, img = diffusion_model.joint_blocks[key[1]](args["txt"], args["img"], c=args["vec"],
                                                         use_checkpoint=diffusion_model.use_checkpoint,
                                                         transformer_options=options)
        return {"txt": txt, "img": img}


class FluxFamily(DiTFamily):
    name = "Flux"
    writes_inputs_in_place = True

    def blocks(self, diffusion_model):
        return [("double_block", i) for i in range(len(diffusion_model.double_blocks))] + \
               [("single_block", i) for i in range(len(diffusion_model.single_blocks))]

    def tokens(self, diffusion_model, key, args):
        options = args["transformer_options"]
        if key[0] == "double_block":
            text, image = args["txt"].shape[1], args["img"].shape[1]
            options[TEXT_TOKENS_KEY] = text  # the forward's own options: its single blocks read it
            if getattr(diffusion_model.double_blocks[key[1]], "flipped_img_txt", False):
                return slice(image, image + text), slice(0, image), text + image
            return slice(0, text), slice(text, text + image), text + image
        total = args["img"].shape[1]
        text = options.get(TEXT_TOKENS_KEY)
        if text is None:  # no double block ran before: ComfyUI 0.33 says where the image tokens start
            text = (options.get("img_slice") or [None])[0]
        if text is None:
            raise RuntimeError("APT cannot tell the text tokens from the image tokens in Flux's single-stream blocks "
                               "(no double-stream block ran before them)")
        return slice(0, text), slice(text, total), total

    def image_stream(self, key, out, image):
        return out["img"] if key[0] == "double_block" else out["img"][:, image]


FAMILIES = {"MMDiT": MMDiTFamily(), "OpenAISignatureMMDITWrapper": MMDiTFamily(), "Flux": FluxFamily()}


def dit_family(diffusion_model) -> DiTFamily | None:
    """The family of a ComfyUI diffusion model (by its class: Flux-like models of other classes, such as Chroma or
    Flux.2, lay their tokens out differently), or None."""
    return FAMILIES.get(type(diffusion_model).__name__)


def attention_heads(t: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """An attention input as [B, heads, N, d], as ComfyUI's attention functions read it: [B, N, heads·d], or already
    [B, heads, N, d] where the caller says skip_reshape (Flux)."""
    if skip_reshape:
        return t
    b, n, width = t.shape
    return t.view(b, n, heads, width // heads).transpose(1, 2)


def _logits(q, k, scale, bias):
    s = (q @ k.transpose(-1, -2)) * scale
    return s if bias is None else s + bias


def _chunks(queries: int, per_query_bytes: int):
    step = max(1, JOINT_CHUNK_BYTES // max(1, per_query_bytes))
    return [(start, min(start + step, queries)) for start in range(0, queries, step)]


class JointTextMap(torch.autograd.Function):
    """The head-averaged joint attention probabilities of image queries over text keys (apt.joint_text_map), or each
    head's (`per_head`: [B, H, N_img, N_txt]; then g = G per head, undivided, below).

    Forward reduces the logits over all keys chunk by chunk of queries and keeps only the map and the log-sum-exp
    per query and head; backward recomputes each chunk's probabilities P from q, k and the log-sum-exp. The map
    M = (1/H)·Σ_h P_h[:, text] has ∂ℓ/∂S_h = P_h ⊙ (g − c), g = G/H on the text columns and 0 elsewhere,
    c = Σ_text (G/H)·P_h (the softmax over all keys couples every column), and S = q·kᵀ·scale, so nothing of size
    [B, H, N_img, N] outlives a chunk; q and k are the tensors the attention itself keeps. The arithmetic is float32
    (float64 for float64 inputs) whatever autocast says: the maps' differences are ~1e-6, below bf16's rounding of
    the logits.
    """

    @staticmethod
    def forward(ctx, q, k, text_start: int, text_stop: int, bias, per_head: bool = False):
        with torch.autocast(q.device.type, enabled=False):  # float32 logits under bf16/fp16 training too
            return JointTextMap._forward(ctx, q, k, text_start, text_stop, bias, per_head)

    @staticmethod
    def _forward(ctx, q, k, text_start: int, text_stop: int, bias, per_head: bool):
        dtype = torch.promote_types(q.dtype, torch.float32)
        b, heads, queries, d = q.shape
        scale = d**-0.5
        kf = k.to(dtype)
        out = q.new_empty((b, heads, queries, text_stop - text_start) if per_head else (b, queries, text_stop - text_start),
                          dtype=dtype)
        lse = q.new_empty((b, heads, queries), dtype=dtype)
        for start, stop in _chunks(queries, b * heads * k.shape[2] * 4):
            s = _logits(q[:, :, start:stop].to(dtype), kf, scale, None if bias is None else bias[..., start:stop, :])
            lse[:, :, start:stop] = torch.logsumexp(s, dim=-1)
            p = torch.exp(s[..., text_start:text_stop] - lse[:, :, start:stop, None])
            if per_head:
                out[:, :, start:stop] = p
            else:
                out[:, start:stop] = p.mean(dim=1)
        ctx.save_for_backward(q, k, lse, bias)
        ctx.text, ctx.per_head = (text_start, text_stop), per_head
        return out

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return JointTextMap._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        q, k, lse, bias = ctx.saved_tensors
        (start_t, stop_t), dtype = ctx.text, lse.dtype
        b, heads, queries, d = q.shape
        scale = d**-0.5
        kf = k.to(dtype)
        g = grad.to(dtype) if ctx.per_head else grad.to(dtype).unsqueeze(1) / heads  # [B, H or 1, Nq, N_txt]
        dq = torch.zeros(q.shape, dtype=dtype, device=q.device) if ctx.needs_input_grad[0] else None
        dk = torch.zeros(k.shape, dtype=dtype, device=k.device) if ctx.needs_input_grad[1] else None
        for start, stop in _chunks(queries, b * heads * k.shape[2] * 4):
            qc = q[:, :, start:stop].to(dtype)
            p = torch.exp(_logits(qc, kf, scale, None if bias is None else bias[..., start:stop, :]) - lse[:, :, start:stop, None])
            gc = g[:, :, start:stop]
            text_p = p[..., start_t:stop_t]
            ds = p * -(text_p * gc).sum(dim=-1, keepdim=True)
            ds[..., start_t:stop_t] += text_p * gc
            if dq is not None:
                dq[:, :, start:stop] = (ds @ kf) * scale
            if dk is not None:
                dk += (ds.transpose(-1, -2) @ qc) * scale
        return (None if dq is None else dq.to(q.dtype), None if dk is None else dk.to(k.dtype), None, None, None, None)


def attention_bias(mask, batch: int, queries: slice, dtype) -> torch.Tensor | None:
    """An attention mask as ComfyUI's attention functions read it (bool: True attends; float: added to the
    logits), as an additive bias broadcastable to [B, H, queries, N] for the given query rows."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[-2] != 1:
        mask = mask[..., queries, :]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def joint_text_map(q, k, heads: int, skip_reshape: bool, text: slice, image: slice, mask=None,
                   per_head: bool = False) -> torch.Tensor:
    """Attention alignment's map on a DiT: softmax(QKᵀ/√d) of the joint attention over all keys, per head, then
    the block of image queries × text keys, averaged over heads: [B, N_img, N_txt] (float32, or float64 inputs'
    precision); with `per_head`, each head's: [B, H, N_img, N_txt]. q and k as the attention function received them
    (see `attention_heads`)."""
    q4, k4 = attention_heads(q, heads, skip_reshape), attention_heads(k, heads, skip_reshape)
    bias = attention_bias(mask, q4.shape[0], image, torch.promote_types(q.dtype, torch.float32))
    return JointTextMap.apply(q4[:, :, image], k4, text.start, text.stop, bias, per_head)
