"""The Personalization Guider: CFG whose unconditional branch is the weak model, on one loaded model.

    D(x) = D_weak(x | ∅) + cfg · (D_ft(x | c) − D_weak(x | ∅)),   θ_ft = θ_base + Δ,  θ_weak = θ_base + s·Δ

(Park et al., ICCV 2025, with their ω = 1 − s; the formula is reconstructed from the abstract and secondary
readings, which place it at eqs. 7 and 9: docs/papers.md §6). The LoRA is merged into the guider's clone at strength 1
the way LoraLoader does it (ComfyUI patches the weights when the clone loads and restores them when it
unloads), so the conditional branch costs exactly what CFG of the personalized model costs. The rows of the
weak branch, which ComfyUI's `cond_or_uncond` tag marks unconditional, go through W + s·Δ in each LoRA layer
(branch_weights.py: a second weight beside the merged one where it fits, else y += (s − 1)·Δ(x) on activations
for those rows only). So the stock `sampling_function` runs unchanged — one batched forward for both
branches when memory allows, then pre-CFG functions (APG), `cfg_function` with post-CFG functions
(RescaleCFG, PAG, CFG++ samplers). The tag is read in an APPLY_MODEL wrapper on the guider's own clone,
so the shared model is never modified.

Modes: `personalization` as above; `cfg`, plain CFG of the personalized model (s = 1); `autoguidance`
(Karras et al., NeurIPS 2024): the weak model is base + a second LoRA (e.g. an earlier checkpoint) on the
same prompt, D = D_weak(x|c) + cfg·(D_ft(x|c) − D_weak(x|c)); s and its schedule do not apply there.
"""


from ..lora.adapter import INJECTION_KEY, LoraAdapter
from .branch_weights import BatchPlan, BranchLayers, attach_branch_layers
from .schedules import progress_of, strength_at

WRAPPER_KEY = "driftless_guidance"
COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond tags
MODES = {
    "personalization": "uncond = weak model (base + LoRA at strength s) on the null prompt",
    "cfg": "plain CFG of the personalized model (LoRA at 1 in both branches) against the null prompt",
    "autoguidance": "uncond = base + the weak LoRA on the same prompt (Karras et al. 2024)",
}


def adapter_for(model_patcher, lora: dict, name: str) -> LoraAdapter:
    """An adapter for `lora` (ComfyUI-native, diffusers/PEFT or kohya keys) on this model; the error says
    how many of its layers the model has, and for which architecture the LoRA looks made."""
    from ..lora.files import check_finite
    from ..lora.formats import to_native
    from ..lora.formats.layout import layout_of

    check_finite(lora, f"the LoRA at the guider's {name} input")
    try:
        native = to_native(lora, layout_of(model_patcher))
        return LoraAdapter.from_state_dict(model_patcher.model.diffusion_model, native)
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None


def make_guider(model_patcher, positive, negative, lora: dict, *, cfg: float, mode: str = "personalization",
                weak_lora: dict | None = None, schedule: str = "constant", s_start: float = 0.3, s_end: float = 0.3,
                start: float = 0.0, end: float = 1.0, split_weights: bool = True):
    """A CFGGuider subclass doing `mode` with `lora` on `model_patcher` (see the module docstring).
    `split_weights=False` keeps every layer on activation corrections (no second weight copy)."""
    import comfy.patcher_extension
    import comfy.samplers

    from ..lora.targets import check_supported

    check_supported(model_patcher, "guide")  # a family the pack does not support: named, before any work
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "autoguidance" and weak_lora is None:
        raise ValueError("autoguidance needs a weak LoRA (e.g. an earlier checkpoint of the same training)")
    import comfy.sd

    base = model_patcher.clone()
    base.remove_injections(INJECTION_KEY)  # a MODEL straight from Train LoRA: guide its base, not base + LoRA twice
    strong = adapter_for(base, lora, "lora")
    adapters = [strong]
    if mode == "autoguidance":
        adapters.append(adapter_for(base, weak_lora, "weak_lora"))
    clone, _ = comfy.sd.load_lora_for_models(base, None, strong.lora_state_dict(), 1.0, 0.0)
    branch_layers = BranchLayers(adapters, split=split_weights)
    attach_branch_layers(clone, branch_layers)

    class Guider(comfy.samplers.CFGGuider):
        def __init__(self):
            super().__init__(clone)
            self.strengths = {COND: {}, UNCOND: {}}  # per branch, adapter index -> correction to the merged LoRA
            self.sigmas = None

        def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
            self.sigmas = sigmas
            return super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs)

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            s = 1.0 if mode == "cfg" else strength_at(self._progress(timestep), schedule, s_start, s_end, start, end)
            # the strong LoRA is merged at 1: the cond branch needs no correction, the uncond branch moves
            # to strength s (or, for autoguidance, from the strong LoRA to the weak one)
            if mode == "autoguidance":
                self.strengths = {COND: {}, UNCOND: {0: -1.0, 1: 1.0}}
            else:
                self.strengths = {COND: {}, UNCOND: {0: s - 1.0}}
            return super().predict_noise(x, timestep, model_options, seed)

        def _progress(self, timestep) -> float:
            if self.sigmas is None:
                return 0.0
            return progress_of(float(timestep.flatten()[0]), self.sigmas)

    guider = Guider()
    guider.branch_layers = branch_layers  # how each LoRA layer computes the weak branch (branch_weights.py)
    if mode == "autoguidance":
        guider.set_conds(positive, positive)  # autoguidance compares two models on the same prompt
    else:
        guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                               _plan_wrapper(guider, branch_layers))
    return guider


def _plan_wrapper(guider, branch_layers: BranchLayers):
    """APPLY_MODEL wrapper: which rows of this batch need which correction, from its cond/uncond tags (none for a
    cond-only batch or s = 1: the merged weights as they are)."""

    def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        tags = transformer_options.get("cond_or_uncond", [COND])
        per_tag = {tag: guider.strengths.get(tag, guider.strengths[COND]) for tag in set(tags)}
        branch_layers.plan = BatchPlan.for_batch(tags, x, per_tag)
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            branch_layers.plan = None

    return wrapper
