"""Driftless Personalization Guider: a GUIDER for SamplerCustomAdvanced; declares and wires guidance/guider.py."""

from comfy_api.latest import io

from ..guidance.guider import MODES
from ..guidance.schedules import SCHEDULES, schedule_problems
from .validation import CheckedNode


class PersonalizationGuider(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessPersonalizationGuider",
            display_name="Driftless Personalization Guider",
            category="Driftless/guide",
            description=(
                "CFG whose unconditional branch is a weak model: the base model with the LoRA at strength s on the "
                "null prompt (Park et al., ICCV 2025). s = 1 is plain CFG of the personalized model; s = 0 guides "
                "against the base model, pushing away from what the base model would draw. One loaded model, "
                "one batched forward per step; APG, PAG, RescaleCFG and CFG++ samplers work as with stock CFG."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The BASE model (a MODEL straight from Train LoRA works too: its LoRA is "
                               "taken off and the lora input applied instead)."),
                io.LoraModel.Input("lora", tooltip="The personalization LoRA: from Train LoRA or Load LoRA."),
                io.Conditioning.Input("positive", tooltip="The prompt with the trigger word."),
                io.Conditioning.Input("null", optional=True, tooltip="The null prompt's conditioning (CLIP Text Encode of an empty text)."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the empty prompt when `null` is not connected."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=30.0, step=0.1, round=0.01, tooltip="Guidance scale. At 1 ComfyUI runs no unconditional branch, so s has no effect: "
                               "on a guidance-distilled Flux dev (sampled at CFG 1), use 2-4 with FluxGuidance lowered to about 1-2."),
                io.Float.Input("weak_strength", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="s: LoRA strength of the weak (unconditional) model at the start of the schedule. "
                               "1 = plain CFG, 0 = the base model. The paper's ω is 1 − s."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="constant",
                               tooltip=" ".join(f"{k}: {v}." for k, v in SCHEDULES.items())),
                io.Float.Input("weak_strength_end", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="s at the end of the schedule (linear and cosine)."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling run where the weak model takes over (before it: s = 1)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling run where it stops (after it: s = 1)."),
                io.Combo.Input("mode", options=list(MODES), default="personalization",
                               tooltip=" ".join(f"{k}: {v}." for k, v in MODES.items())),
                io.LoraModel.Input("weak_lora", optional=True,
                                   tooltip="autoguidance only: the weak LoRA (e.g. an early checkpoint of the same run)."),
            ],
            outputs=[io.Guider.Output(display_name="GUIDER", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def validate_inputs(cls, **kw) -> bool | str:
        keys = ("weak_strength", "weak_strength_end", "start", "end")
        if all(k in kw for k in keys):
            problems = schedule_problems(*(kw[k] for k in keys))
            if problems:
                return "; ".join(problems)
        return True

    @classmethod
    def execute(cls, model, lora, positive, cfg, weak_strength, schedule, weak_strength_end, start, end, mode,
                null=None, clip=None, weak_lora=None) -> io.NodeOutput:
        from ..guidance.guider import make_guider

        problems = schedule_problems(weak_strength, weak_strength_end, start, end)
        if problems:
            raise ValueError("; ".join(problems))
        if null is None:
            if clip is None:
                raise ValueError("connect the null prompt's conditioning, or a CLIP to encode the empty prompt")
            null = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        guider = make_guider(model, positive, null, lora, cfg=cfg, mode=mode, weak_lora=weak_lora, schedule=schedule,
                             s_start=weak_strength, s_end=weak_strength_end, start=start, end=end)
        return io.NodeOutput(guider)
