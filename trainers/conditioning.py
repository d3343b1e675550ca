"""CONDITIONING -> the keyword inputs of BaseModel.apply_model (the seam to comfy.samplers).

What the samplers do per step (sampler_helpers.convert_cond, samplers.encode_model_conds, then each
model cond's process_cond) is done once per training example: the text stays fixed while latents are
re-noised, so the model inputs (c_crossattn; for SDXL also the ADM vector y built from the pooled text
embedding and the image size) are computed once and concatenated into batches.
"""

import torch


def model_inputs(model, conditioning, latent: torch.Tensor) -> dict:
    """apply_model kwargs for one example; `latent` [1, C, h, w] sets the size SDXL conditions on."""
    import comfy.sampler_helpers
    import comfy.samplers

    if len(conditioning) != 1:
        raise ValueError(
            f"a training caption must encode to one conditioning entry, got {len(conditioning)} "
            "(combined or area conditionings are not supported for training)"
        )
    device = latent.device
    conds = comfy.sampler_helpers.convert_cond(conditioning)
    conds = comfy.samplers.encode_model_conds(model.extra_conds, conds, latent, device, "positive", latent_image=latent)
    out = {}
    for name, cond in conds[0]["model_conds"].items():
        processed = cond.process_cond(batch_size=1, device=device, area=None).cond
        out[name] = processed.detach().clone() if isinstance(processed, torch.Tensor) else processed
    return out


def batch_inputs(items: list[dict]) -> dict:
    """Concatenate per-example inputs along the batch; non-tensor inputs must agree and are kept once."""
    out = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if isinstance(values[0], torch.Tensor):
            out[name] = torch.cat(values, dim=0)
        else:
            if any(v != values[0] for v in values[1:]):
                raise ValueError(f"model input {name!r} differs between examples of one batch")
            out[name] = values[0]
    return out
