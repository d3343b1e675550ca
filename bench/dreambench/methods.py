"""The training methods a run compares: a drift regularizer (or a chain of them, `anchor+dco`) at its node's defaults."""

from ...trainers.regularizers.apt import APTConfig
from ...trainers.regularizers.dco import MODES, DCOConfig
from ...trainers.regularizers.parameter_anchor import ParameterAnchorConfig
from ...trainers.regularizers.prior_preservation import PriorPreservationConfig
from .dataset import DreamBenchError

_anchor, _dco, _apt, _prior = ParameterAnchorConfig(), DCOConfig(), APTConfig(), PriorPreservationConfig()
METHODS = {
    "plain": "no regularizer (DreamBooth-LoRA)",
    "anchor": f"parameter anchor, λ = {_anchor.weight:g}, {_anchor.form} form (Preserve & Personalize)",
    "dco": f"DCO, β = {_dco.beta:g}, mode {_dco.mode}: {MODES[_dco.mode]} (Lee et al. 2024)",
    "apt": f"APT with adaptive adjustment {'on' if _apt.adaptive_adjustment else 'off'}, representation weight "
           f"{_apt.representation_weight:g}, attention weight {_apt.attention_weight:g} (Chae et al. 2025)",
    "prior": f"DreamBooth prior preservation, weight {_prior.weight:g}, --class-images images sampled by the base model",
}
GUIDANCE = {
    "cfg": "classifier-free guidance of the personalized model (LoRA at 1 in both branches)",
    "personalization": "personalization guidance: the unconditional branch is base + s·LoRA (Park et al. 2025)",
}


def parse_method(spec: str) -> tuple[str, ...]:
    """'anchor+dco' -> ('anchor', 'dco'); 'plain' alone means no regularizer."""
    parts = tuple(p.strip() for p in spec.split("+") if p.strip())
    unknown = [p for p in parts if p not in METHODS]
    if not parts or unknown:
        raise DreamBenchError(f"--regularizer {spec!r}: choose from {', '.join(METHODS)} (chain with '+', e.g. anchor+dco)")
    if "plain" in parts and len(parts) > 1:
        raise DreamBenchError(f"--regularizer {spec!r}: 'plain' means no regularizer and does not chain")
    if len(set(parts)) != len(parts):
        raise DreamBenchError(f"--regularizer {spec!r} names a regularizer twice")
    return parts


def build_regularizers(parts: tuple[str, ...], prior=None) -> list:
    """The regularizer objects, as the regularizer nodes build them with their default inputs.

    `prior` is a callable returning (class latents, class conditioning, class prompt); called only for 'prior'.
    """
    from ...trainers.regularizers.apt import APT
    from ...trainers.regularizers.dco import DCO
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    out = []
    for part in parts:
        if part == "anchor":
            out.append(ParameterAnchor())  # each method at its node defaults
        elif part == "dco":
            out.append(DCO())
        elif part == "apt":
            out.append(APT())
        elif part == "prior":
            latents, conditioning, class_prompt = prior()
            out.append(PriorPreservation(latents, conditioning, class_prompt))
    return out
