"""Continual personalization nodes: a concept pool carried from one concept's training to the next.

Per concept: Continual Regularizer (pool -> Train LoRA's regularizer input) -> Train LoRA -> Add Concept
(Fisher pass, the LoRA folded into a new pool) -> Save Concept Pool; Retention Report on held-out
images at any point. The math lives in trainers/continual/ and trainers/regularizers/continual.py.
"""

import pathlib

from comfy_api.latest import io, ui

from ..trainers.continual.pool import METHODS
from ..trainers.regularizers import continual as continual_regularizer
from .knobs import knob_inputs
from .train_lora import REGULARIZER
from .training_data import TRAINING_DATA
from .validation import CheckedNode

CONCEPT_POOL = io.Custom("DRIFTLESS_CONCEPT_POOL")
CATEGORY = "Driftless/train/continual"


def pool_folder() -> pathlib.Path:
    """models/driftless/concept_pools: where pools are saved and listed."""
    import folder_paths

    return pathlib.Path(folder_paths.models_dir) / "driftless" / "concept_pools"


def saved_pools() -> list[str]:
    folder = pool_folder()
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors") if p.is_file())


def _pool_input():
    return CONCEPT_POOL.Input("pool", tooltip="The concept pool (from Concept Pool, Load Concept Pool or Add Concept).")


def _pool_output(tooltip="The concept pool, for the next concept's regularizer, Add Concept, Save or the report."):
    return CONCEPT_POOL.Output(display_name="pool", tooltip=tooltip)


def _encoder(clip):
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))


class ConceptPool(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessConceptPool",
            display_name="Driftless Concept Pool",
            category=CATEGORY,
            description=(
                "Starts an empty concept pool for continual personalization (Jha et al., 'Mining your own secrets', "
                "ICLR 2025): teach one model several concepts one after another, keeping no images of earlier ones. "
                "The pool carries each learned concept's LoRA snapshot and the accumulated Fisher to the next training."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model every concept of this pool is trained on (its fingerprint is recorded)."),
                io.Combo.Input("method", options=list(METHODS), default="EWC-DC",
                               tooltip=" ".join(f"{k}: {v}." for k, v in METHODS.items())),
                io.String.Input("pretrained_prompt", default="a photo",
                                tooltip="c_0, the pretrained concept in every DC score: a generic prompt without any trigger "
                                "(e.g. 'a photo', or the class 'a photo of a dog' when all concepts share it)."),
                io.Float.Input("score_temperature", default=1.0, min=1e-6, max=1e9, step=0.1, round=False,
                               tooltip="τ in p(c_j|x) = softmax(−‖ε − ε_θ(x_t, c_j)‖²/τ); 1 is the paper's score (errors summed "
                               "over the latent, so a larger latent gives sharper scores). Raise it when the Retention Report "
                               "says the scores are one-hot; the latent's element count (16384 for SD1.5 at 512²) is the "
                               "other extreme, nearly uniform scores."),
            ],
            outputs=[_pool_output("The empty pool.")],
        )

    @classmethod
    def execute(cls, model, method, pretrained_prompt, score_temperature) -> io.NodeOutput:
        from ..trainers.continual.pool import ConceptPool as Pool
        from ..lora.fingerprint import patcher_fingerprint

        return io.NodeOutput(Pool(patcher_fingerprint(model), method, pretrained_prompt, score_temperature))


class LoadConceptPool(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessLoadConceptPool",
            display_name="Driftless Load Concept Pool",
            category=CATEGORY,
            description="Reads a concept pool saved in models/driftless/concept_pools and checks it belongs to the model.",
            inputs=[
                io.Combo.Input("pool_name", options=saved_pools(), tooltip="A pool file in models/driftless/concept_pools."),
                io.Model.Input("model", tooltip="The base model the pool was made on: another model is refused."),
            ],
            outputs=[_pool_output(), io.String.Output(display_name="summary", tooltip="The pool's concepts and settings.")],
        )

    @classmethod
    def validate_inputs(cls, pool_name, **_) -> bool | str:
        if pool_name not in saved_pools():
            return f"no concept pool {pool_name!r} in {pool_folder()} (saved pools: {saved_pools()})"
        return True

    @classmethod
    def fingerprint_inputs(cls, pool_name, **_):
        """A pool saved again under the same name is read again (not taken from the cache)."""
        path = pool_folder() / pool_name
        return f"{path.stat().st_mtime_ns}:{path.stat().st_size}" if path.is_file() else ""

    @classmethod
    def execute(cls, pool_name, model) -> io.NodeOutput:
        from ..trainers.continual.pool import load_pool
        from ..lora.fingerprint import patcher_fingerprint
        from ..lora.storage import safe_path

        pool = load_pool(safe_path(pool_folder(), pool_name, ".safetensors"))
        pool.check_base(patcher_fingerprint(model))
        return io.NodeOutput(pool, pool.describe())


class ContinualRegularizer(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessContinualRegularizer",
            display_name="Driftless Continual Regularizer",
            category=CATEGORY,
            description=(
                "Trains the next concept against a concept pool: the run starts from the pool's LoRA and, for EWC-DC "
                "and LoRA-EWC pools, adds (λ/2)·Σ F·(θ − θ*)² with the pool's Fisher. With distill on, the run is the "
                "concept's diffusion-score consolidation instead: it starts from the LoRA just trained (the teacher) "
                "and distils DC scores and noise predictions from it and a random past concept's LoRA."
            ),
            inputs=[
                _pool_input(),
                io.Clip.Input("clip", tooltip="The model's text encoder: encodes c_0 and the past concepts' prompts."),
                *knob_inputs(continual_regularizer.ContinualConfig, "ewc_weight", "distill"),
                io.LoraModel.Input("teacher", optional=True,
                                   tooltip="distill only: the LoRA just trained on this concept (Train LoRA's lora output)."),
                *knob_inputs(continual_regularizer.ContinualConfig, "score_weight", "noise_weight", "concepts_per_score"),
                REGULARIZER.Input("chain", optional=True, tooltip="Regularizers configured upstream; this one is added to them."),
            ],
            outputs=[REGULARIZER.Output(display_name="regularizer", tooltip="Connect to Train LoRA's regularizer input.")],
        )

    @classmethod
    def execute(cls, pool, clip, teacher=None, chain=None, **settings) -> io.NodeOutput:
        from ..trainers.regularizers import chain as append
        from ..trainers.regularizers.continual import Continual, ContinualConfig

        encode = _encoder(clip)
        config = ContinualConfig(**settings)
        regularizer = Continual(pool, [encode(c.prompt) for c in pool.concepts], encode(pool.pretrained_prompt), config,
                                teacher=teacher if config.distill else None)
        return io.NodeOutput(append(chain, regularizer))


class AddConcept(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessAddConcept",
            display_name="Driftless Add Concept",
            category=CATEGORY,
            description=(
                "Folds a concept just trained into the pool: stores its LoRA snapshot and, for EWC pools, computes the "
                "diagonal Fisher on the concept's training images (EWC-DC: from DC-score cross-entropy; LoRA-EWC: from "
                "the denoising loss) and adds it to the pool's Fisher with decay γ. Returns a new pool; the input pool "
                "is unchanged, and nothing is written to disk (use Save Concept Pool)."
            ),
            inputs=[
                _pool_input(),
                io.Model.Input("model", tooltip="The base model (a MODEL from Train LoRA works too: its LoRA is taken off)."),
                io.LoraModel.Input("lora", tooltip="The LoRA trained on this concept (after DSC, the consolidated one)."),
                TRAINING_DATA.Input("training_data", tooltip="This concept's training data (the Fisher is computed on it; "
                                    "the images are not stored)."),
                io.Clip.Input("clip", tooltip="The model's text encoder (c_0 and the past concepts' prompts)."),
                io.String.Input("trigger", default="sks dog",
                                tooltip="A unique name for the concept in the pool, e.g. its identifier and class."),
                io.String.Input("prompt", default="",
                                tooltip="The concept's prompt c_j in later DC scores; empty = the training data's most common caption."),
                io.Int.Input("fisher_draws", default=50, min=1, max=100000,
                             tooltip="N draws of (image, t, ε) the Fisher is averaged over (each a forward and a backward)."),
                io.Float.Input("fisher_decay", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="γ of online EWC: F ← γ·F + F_new. 1 keeps every concept's Fisher in full; lower "
                               "lets old concepts' constraints fade."),
                *knob_inputs(continual_regularizer.ContinualConfig, "concepts_per_score"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seeds the Fisher draws."),
            ],
            outputs=[
                _pool_output(),
                io.LoraModel.Output(display_name="lora", tooltip="The pool's LoRA now (this concept's snapshot)."),
                io.String.Output(display_name="summary", tooltip="The pool's concepts and settings."),
            ],
        )

    @classmethod
    def execute(cls, pool, model, lora, training_data, clip, trigger, prompt, fisher_draws, fisher_decay,
                concepts_per_score, seed) -> io.NodeOutput:
        from ..trainers.continual.learn import add_concept
        from ..trainers.model_state import outside_inference_mode

        grown = outside_inference_mode(add_concept)(
            pool, model, lora, training_data, _encoder(clip), trigger=trigger, prompt=prompt, draws=fisher_draws,
            decay=fisher_decay, k=concepts_per_score, seed=seed, metadata=getattr(lora, "metadata", None))
        summary = grown.describe()
        return io.NodeOutput(grown, _pool_lora(grown, len(grown) - 1), summary, ui=ui.PreviewText(summary))


def _pool_lora(pool, index: int):
    from ..lora.files import LoraWeights

    concept = pool.concepts[index]
    return LoraWeights(dict(concept.lora), {
        "format": "driftless.lora.v1", "base_model_fingerprint": pool.base_fingerprint,
        "concept_pool": {"method": pool.method, "concepts": pool.triggers[: index + 1]},
        "prompts": [c.prompt for c in pool.concepts[: index + 1]],
    })


class SaveConceptPool(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessSaveConceptPool",
            display_name="Driftless Save Concept Pool",
            category=CATEGORY,
            description=(
                "Writes the pool to models/driftless/concept_pools as one safetensors file (LoRA snapshots and Fisher "
                "as tensors, everything else as JSON metadata), atomically. Saving over a pool it grew from is allowed; "
                "replacing any other file needs overwrite."
            ),
            inputs=[
                _pool_input(),
                io.String.Input("filename", default="my_concepts",
                                tooltip="Path under models/driftless/concept_pools, without extension; no '..'."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file even if this pool did not grow from it (or it is unreadable)."),
            ],
            outputs=[io.String.Output(display_name="pool_name", tooltip="The name Load Concept Pool lists it under.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, pool, filename, overwrite) -> io.NodeOutput:
        from ..trainers.continual.pool import load_pool
        from ..lora.storage import safe_path

        folder = pool_folder()
        path = safe_path(folder, filename, ".safetensors")
        if path.exists() and not overwrite:
            try:
                on_disk = load_pool(path)
            except ValueError as e:
                raise ValueError(f"{path} exists and is not a readable concept pool ({e}); enable overwrite to replace it") from None
            if not pool.extends(on_disk):
                raise FileExistsError(
                    f"{path} holds another pool ({on_disk.method}, concepts {on_disk.triggers}) that this one "
                    f"({pool.method}, concepts {pool.triggers}) did not grow from: choose another filename or enable overwrite"
                )
        pool.save(path)
        name = path.relative_to(folder).as_posix()
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name} ({len(pool)} concepts) in {folder}"))


class ConceptPoolLoRA(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessConceptPoolLoRA",
            display_name="Driftless Concept Pool LoRA",
            category=CATEGORY,
            description=(
                "The pool's LoRA as it was right after a concept was learned (by default the latest), for the Personalization "
                "Guider, Train LoRA's outputs' consumers, or Save LoRA (then the stock Load LoRA applies it)."
            ),
            inputs=[
                _pool_input(),
                io.String.Input("concept", default="", tooltip="A concept's trigger; empty = the latest concept (the pool's LoRA now)."),
            ],
            outputs=[io.LoraModel.Output(display_name="lora", tooltip="That snapshot (ComfyUI-native keys).")],
        )

    @classmethod
    def execute(cls, pool, concept="") -> io.NodeOutput:
        if not pool.concepts:
            raise ValueError("the concept pool is empty: it has no LoRA yet")
        index = pool.index_of(concept) if concept.strip() else len(pool) - 1
        return io.NodeOutput(_pool_lora(pool, index))


class RetentionReport(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessRetentionReport",
            display_name="Driftless Retention Report",
            category=CATEGORY,
            description=(
                "How well every concept of the pool survives: on held-out images you give for evaluation only (never "
                "stored), each concept's diffusion-classifier accuracy and denoising loss with the base model, with the "
                "LoRA right after it was learned, and with the pool's LoRA now; and how peaked the DC scores are now "
                "(one-hot scores: raise the Concept Pool's score_temperature)."
            ),
            inputs=[
                _pool_input(),
                io.Model.Input("model", tooltip="The base model."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                TRAINING_DATA.Input("evaluation_data", tooltip="Held-out images from a Driftless Training Data node; caption each "
                                    "with its concept's prompt or trigger (one line per image) so it is scored as that concept."),
                io.Int.Input("draws", default=8, min=1, max=1000,
                             tooltip="Draws of (t, ε) per image, shared by every candidate concept and every stage."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seeds the draws: same seed, same noise for every stage."),
                io.Boolean.Input("all_stages", default=False,
                                 tooltip="Also evaluate every intermediate snapshot (the full accuracy matrix in the JSON)."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="A markdown table, one row per concept, and a line on how "
                                 "peaked the DC scores are now."),
                io.String.Output(display_name="json", tooltip="Every figure, per concept and stage, as JSON."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, pool, model, clip, evaluation_data, draws, seed, all_stages) -> io.NodeOutput:
        from ..trainers.continual.retention import as_json, assign_concepts, evaluate, markdown
        from ..lora.fingerprint import patcher_fingerprint
        from ..trainers.model_state import outside_inference_mode

        pool.check_base(patcher_fingerprint(model))
        labels = assign_concepts(pool, evaluation_data.captions)
        latents = evaluation_data.same_size_latents("the retention evaluation")
        report = outside_inference_mode(evaluate)(pool, model, _encoder(clip), latents, labels,
                                                  draws=draws, seed=seed, all_stages=all_stages)
        text = markdown(report)
        return io.NodeOutput(text, as_json(report), ui=ui.PreviewText(text))


NODES = [ConceptPool, LoadConceptPool, ContinualRegularizer, AddConcept, SaveConceptPool, ConceptPoolLoRA, RetentionReport]
