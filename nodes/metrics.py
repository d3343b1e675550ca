"""Driftless Personalization Metrics and Driftless Drift Metrics: DreamBench scores from local CLIP / DINO folders."""

import logging
import math

from comfy_api.latest import io

from .validation import CheckedNode

NONE = "none"
_LOADED: dict[str, tuple] = {}  # role -> (folder, stamp, backbone): the last backbone of each role stays loaded


def _models() -> dict:
    """{choice name: (folder, kind)} over models/driftless_metrics and clip_vision."""
    from ..metrics.backbones import find_models
    from .host import metrics_roots

    found = {}
    for prefix, roots in metrics_roots().items():
        for name, entry in find_models(roots).items():
            found.setdefault(prefix + name, entry)
    return found


def _choices(kinds: tuple[str, ...]) -> list[str]:
    try:
        return [NONE] + sorted(n for n, (_, kind) in _models().items() if kind in kinds)
    except Exception:  # a broken folder must not take the node list down
        logging.exception("Driftless metrics: listing backbone folders failed")
        return [NONE]


def _where() -> str:
    from .host import metrics_roots

    return " or ".join(f"{', '.join(roots)}" for roots in metrics_roots().values() if roots)


def _check_choice(value: str, role: str) -> str | None:
    """An actionable message when a chosen backbone is not there or incomplete; None when it is fine."""
    from ..metrics.backbones import MissingWeights, check_folder, expected_files

    if value == NONE:
        return None
    models = _models()
    if value not in models:
        return (f"{role}_model {value!r} not found: put a folder named {value!r} holding {expected_files(role)} "
                f"into {_where()} (nothing is downloaded)")
    kind = models[value][1]
    allowed = ("clip", "clip_vision") if role == "clip" else ("dino",)
    if kind not in allowed:
        return f"{role}_model {value!r} is a {kind} model, not a {role} model"
    try:
        check_folder(models[value][0], kind)
    except MissingWeights as e:
        return f"{role}_model: {e}"
    return None


def _stamp(folder) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


def _backbone(value: str, role: str):
    """The chosen backbone, loaded (or reused while its files are unchanged), on ComfyUI's compute device."""
    from ..metrics.backbones import MissingWeights, load_backbone
    from .host import check_interrupt, load_on_compute_device

    if value == NONE:
        return None
    problem = _check_choice(value, role)
    if problem:
        raise MissingWeights(problem)
    folder, kind = _models()[value]
    stamp = _stamp(folder)
    cached = _LOADED.get(role)
    if cached is None or cached[0] != folder or cached[1] != stamp:
        _LOADED.pop(role, None)
        _LOADED[role] = (folder, stamp, load_backbone(folder, name=value, kind=kind))
    backbone = _LOADED[role][2]
    check_interrupt()
    load_on_compute_device(backbone.model)
    return backbone


def _backbone_inputs():
    return [
        io.Combo.Input("clip_model", options=_choices(("clip", "clip_vision")),
                       tooltip="A CLIP folder under models/driftless_metrics (or a transformers CLIP folder in "
                       "models/clip_vision): config.json, model.safetensors, preprocessor_config.json and the "
                       "tokenizer files, e.g. openai/clip-vit-base-patch32 (DreamBench's usual ViT-B/32). "
                       "'none' skips CLIP-T and CLIP-I. A vision-only CLIP gives CLIP-I only."),
        io.Combo.Input("dino_model", options=_choices(("dino",)),
                       tooltip="A DINO folder under models/driftless_metrics: config.json, model.safetensors, "
                       "preprocessor_config.json, e.g. facebook/dino-vits16 (DINO v1 ViT-S/16, DreamBooth's "
                       "choice) or facebook/dinov2-small. 'none' skips DINO."),
    ]


def _finish(node_cls, kind: str, result, counts: dict, settings: dict, filename_prefix: str):
    """Write the JSON report; returns its path relative to the output folder and the node's UI output: the table
    as a preview image (shown on the node), as text (printed by the headless runner) and the report file entry."""
    from comfy_api.latest import ui

    from ..metrics.report import build_report, table, table_image
    from .host import save_json_report

    report = build_report(kind, result, counts, settings)
    filename, subfolder = save_json_report(report, filename_prefix)
    relative = f"{subfolder}/{filename}" if subfolder else filename
    text = table(report) + f"\nreport: {relative}"
    logging.info("Driftless %s metrics:\n%s", kind, text)
    preview = ui.PreviewImage(table_image(report), cls=node_cls).as_dict()
    return relative, {**preview, "text": [text],
                      "reports": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}


def _mean(result, key: str) -> float:
    scores = result.scores.get(key)
    return scores.mean if scores is not None else math.nan


class MetricsNode(CheckedNode):
    """What both metrics nodes share: backbone choices checked before running, and a re-run when the chosen
    backbones' files change."""

    checks_itself = ("clip_model", "dino_model")  # a missing backbone gets a message saying where to put it

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        problems = [p for p in (_check_choice(values.get("clip_model", NONE), "clip"),
                                _check_choice(values.get("dino_model", NONE), "dino")) if p]
        if problems:
            return "; ".join(problems)
        if values.get("clip_model", NONE) == NONE and values.get("dino_model", NONE) == NONE:
            return "choose a clip_model, a dino_model or both (both are 'none')"
        return True

    @classmethod
    def fingerprint_inputs(cls, clip_model=NONE, dino_model=NONE, **_):
        return str([_fingerprint(clip_model), _fingerprint(dino_model)])


class PersonalizationMetrics(MetricsNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessPersonalizationMetrics",
            display_name="Driftless Personalization Metrics",
            category="Driftless/measure",
            description=(
                "DreamBench's three scores (DreamBooth, Ruiz et al. 2023) from local weights: DINO and CLIP-I, the "
                "mean pairwise cosine between generated and reference images' DINO / CLIP image embeddings "
                "(subject fidelity), and CLIP-T, the cosine between each image and its prompt with the identifier "
                "removed or replaced by the class noun (prompt fidelity). Raw cosines in [-1, 1]. Writes a JSON "
                "report (per-image values, std) into the output folder and shows a table."
            ),
            inputs=[
                io.Image.Input("generated_images", tooltip="The personalized model's samples (an IMAGE batch)."),
                io.Image.Input("reference_images", tooltip="The real photos of the subject (the training photos in "
                               "DreamBench); their embeddings are cached between runs."),
                io.String.Input("prompts", multiline=True, default="a photo of sks dog",
                                tooltip="One prompt per line: one line for all images, one per image, or P lines for "
                                "a batch made P prompts in a row (each prompt for N/P consecutive images). Used by CLIP-T."),
                io.String.Input("identifier", default="sks",
                                tooltip="The rare token(s) of the subject, comma-separated. CLIP-T removes each one "
                                "('a sks dog' -> 'a dog') or, when the class noun does not follow it, replaces it "
                                "by the class noun ('a photo of sks' -> 'a photo of dog')."),
                io.String.Input("class_noun", default="dog",
                                tooltip="The subject's class noun (dog, vase, ...). Empty: identifiers are only removed."),
                *_backbone_inputs(),
                io.String.Input("filename_prefix", default="driftless/metrics",
                                tooltip="Report path under the output folder; a counter and .json are appended."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_t", tooltip="Mean CLIP-T (image-prompt cosine); NaN when not computed."),
                io.Float.Output(display_name="clip_i", tooltip="Mean CLIP-I (generated-reference image cosine); NaN without CLIP."),
                io.Float.Output(display_name="dino", tooltip="Mean DINO (generated-reference CLS cosine); NaN without DINO."),
                io.String.Output(display_name="report_file", tooltip="The JSON report, relative to the output folder."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, generated_images, reference_images, prompts, identifier, class_noun, clip_model, dino_model,
                filename_prefix) -> io.NodeOutput:
        from ..metrics import prompts as prompt_rules
        from ..metrics.evaluate import personalization_metrics

        lines, identifiers = prompt_rules.split_lines(prompts), prompt_rules.split_identifiers(identifier)
        if clip_model != NONE:
            prompt_rules.per_image(lines, generated_images.shape[0])  # a prompt-count mistake fails before any loading
        clip, dino = _backbone(clip_model, "clip"), _backbone(dino_model, "dino")
        result = personalization_metrics(generated_images, reference_images, lines, clip=clip, dino=dino,
                                         identifiers=identifiers, class_noun=class_noun.strip())
        counts = {"generated": int(generated_images.shape[0]), "reference": int(reference_images.shape[0])}
        settings = {"identifiers": identifiers, "class_noun": class_noun.strip()}
        relative, ui = _finish(cls, "personalization", result, counts, settings, filename_prefix)
        return io.NodeOutput(_mean(result, "clip_t"), _mean(result, "clip_i"), _mean(result, "dino"), relative, ui=ui)


class DriftMetrics(MetricsNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessDriftMetrics",
            display_name="Driftless Drift Metrics",
            category="Driftless/measure",
            description=(
                "How far personalization moved the model on prompts it should not change: give samples of the base "
                "model and of the personalized model drawn with the same prior prompts (without the identifier) "
                "and the same seeds, in the same order. Reports the CLIP-I and DINO cosine of each pair and their "
                "means: 1 = unchanged, lower = more drift. Writes a JSON report and shows a table."
            ),
            inputs=[
                io.Image.Input("base_images", tooltip="Samples of the base model (LoRA off); cached between runs."),
                io.Image.Input("personalized_images",
                               tooltip="Samples of the personalized model at the same prompts and seeds, same order."),
                *_backbone_inputs(),
                io.String.Input("filename_prefix", default="driftless/drift",
                                tooltip="Report path under the output folder; a counter and .json are appended."),
                io.String.Input("prompts", multiline=True, default="", optional=True,
                                tooltip="Optional: the prior prompts (one line per prompt, as for the metrics node), "
                                "recorded in the report."),
                io.String.Input("identifier", default="sks", optional=True,
                                tooltip="Optional: the identifier; prompts containing it are flagged in the report, "
                                "since such pairs measure personalization, not drift."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_i", tooltip="Mean CLIP-I cosine of the pairs (higher = less drift); NaN without CLIP."),
                io.Float.Output(display_name="dino", tooltip="Mean DINO cosine of the pairs (higher = less drift); NaN without DINO."),
                io.String.Output(display_name="report_file", tooltip="The JSON report, relative to the output folder."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, base_images, personalized_images, clip_model, dino_model, filename_prefix, prompts="",
                identifier="") -> io.NodeOutput:
        from ..metrics import prompts as prompt_rules
        from ..metrics.evaluate import drift_metrics

        if base_images.shape[0] != personalized_images.shape[0]:
            raise ValueError(f"base_images ({base_images.shape[0]}) and personalized_images "
                             f"({personalized_images.shape[0]}) must pair up image for image (same prompts and seeds)")
        clip, dino = _backbone(clip_model, "clip"), _backbone(dino_model, "dino")
        lines, identifiers = prompt_rules.split_lines(prompts), prompt_rules.split_identifiers(identifier)
        result = drift_metrics(base_images, personalized_images, clip=clip, dino=dino, prompts=lines,
                               identifiers=identifiers)
        relative, ui = _finish(cls, "drift", result, {"pairs": int(base_images.shape[0])}, {"identifiers": identifiers},
                               filename_prefix)
        return io.NodeOutput(_mean(result, "clip_i"), _mean(result, "dino"), relative, ui=ui)


def _fingerprint(value: str) -> str:
    """Changes when the chosen backbone's files change, so ComfyUI re-runs the node."""
    if value == NONE:
        return NONE
    entry = _models().get(value)
    return f"{value}:{hash(_stamp(entry[0]))}" if entry else value
