"""Driftless Shapes Scores: the drift benchmark's classifier scores base and personalized samples of the shapes model."""

from comfy_api.latest import io, ui

from .pretrained_model import PRESETS
from .validation import CheckedNode


class ShapesScores(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessShapesScores",
            display_name="Driftless Shapes Scores (demo model)",
            category="Driftless/demo",
            description=(
                "Scores samples of the Driftless Pretrained Shapes Model with the classifier trained beside it "
                "(shapes/): subject fidelity (feature cosine to the subject pictures), whether the shape and "
                "colour the prompt names were drawn, and how far the personalized samples moved from the base "
                "model's at the same seeds. Give both models' samples of the same prompt and seeds. Shows a table, "
                "writes a JSON report and returns the table as text."
            ),
            inputs=[
                io.Image.Input("subject_images", tooltip="The subject's pictures the LoRA was trained on (32x32)."),
                io.Image.Input("base_samples", tooltip="Samples of the base model (LoRA off) for the prompt below."),
                io.Image.Input("personalized_samples",
                               tooltip="Samples of the personalized model for the same prompt and seeds, same order."),
                io.String.Input("prompt", default="a red circle on a black background",
                                tooltip=("The prompt both were sampled with. A shape (circle, square, triangle) or a "
                                         "colour (red, green, blue, yellow) it names is checked with the classifier.")),
                io.Combo.Input("preset", options=list(PRESETS), default="full",
                               tooltip="The Pretrained Shapes Model preset that drew the samples: its classifier scores them."),
                io.String.Input("filename_prefix", default="driftless_shapes/scores",
                                tooltip="Report path under the output folder; a counter and .json are appended."),
            ],
            outputs=[io.String.Output(display_name="table", tooltip="The scores as a text table.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, subject_images, base_samples, personalized_samples, prompt, preset, filename_prefix) -> io.NodeOutput:
        from ..metrics.report import aligned_lines, cells_image
        from ..shapes import scorecard, weights
        from .host import save_json_report

        folder = weights.folder_for(preset)
        if folder is None:
            raise ValueError(f"the shapes model (preset {preset}) is not built yet in {weights.cache_dir(weights.pretrain.PRESETS[preset])}: run "
                             "the Driftless Pretrained Shapes Model node with the same preset first")
        net = weights.load_classifier(folder)
        scores = scorecard.scorecard(net, prompt, subject_images, base_samples, personalized_samples)
        title = f"Shapes scores, '{prompt}' ({base_samples.shape[0]} seeds)"
        report = {"kind": "driftless_shapes_scores", "prompt": prompt, "preset": preset, "seeds": int(base_samples.shape[0]),
                  "scores": scores, "meaning": {name: scorecard.meaning(name) for name in scores}}
        filename, subfolder = save_json_report(report, filename_prefix)
        text = "\n".join([title, *aligned_lines(scorecard.rows(scores))])
        preview = ui.PreviewImage(cells_image(title, scorecard.rows(scores), []), cls=cls).as_dict()
        return io.NodeOutput(text, ui={**preview, "text": [text],
                                       "reports": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})
