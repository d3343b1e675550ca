"""The concept pool: what continual personalization carries from one concept to the next.

Per learned concept, in the order learned: its trigger (a unique name, e.g. "sks dog"), its prompt
c_j (the text its DC score uses), the snapshot of the shared LoRA after it was learned (ComfyUI-native
keys, so any snapshot is a LoRA the stock loader applies), and the diagonal Fisher accumulated up to it
(online EWC; empty for sequential LoRA). Pool-wide: the base model's fingerprint, the method, the
pretrained concept's prompt c_0 and the DC score temperature τ. No image is ever stored.

On disk: one safetensors file. Tensors are `concepts.<i>.lora.<key>` and `concepts.<i>.fisher.<key>`;
everything else is one JSON document in the safetensors header (metadata key `driftless_concept_pool`). Writes go to a temporary file that is renamed over
the target, so a reader sees the old pool or the new one, never half of one. Loading checks the
structure and refuses anything else with a message naming what is wrong.

A pool object is never changed after it is made: `with_concept` returns a new pool (ComfyUI caches
node outputs, so a pool passed between nodes must not change under its readers).
"""

import json
import logging
import pathlib
from dataclasses import dataclass, field

import torch

from ...lora.files import check_finite
from ...lora.storage import load_safetensors, save_safetensors_atomic

FORMAT = "driftless.concept-pool.v1"
METADATA_KEY = "driftless_concept_pool"
METHODS = {
    "EWC-DC": "EWC penalty with the Fisher of diffusion-classifier scores (Jha et al. 2025)",
    "LoRA-EWC": "EWC penalty with the Fisher of the plain denoising loss (baseline)",
    "sequential LoRA": "no penalty: the one LoRA is fine-tuned concept after concept (baseline)",
}
FISHER_SOURCES = {"EWC-DC": "diffusion classifier", "LoRA-EWC": "denoising loss", "sequential LoRA": None}
TRAINABLE_SUFFIXES = (".lora_down.weight", ".lora_up.weight")


def trainable_keys(lora: dict) -> list[str]:
    """The LoRA's parameter keys (A and B of every layer; not alpha), sorted."""
    return sorted(k for k in lora if k.endswith(TRAINABLE_SUFFIXES))


def lora_shape(lora: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sorted(lora.items())}


def describe_lora(lora: dict) -> str:
    downs = [v for k, v in lora.items() if k.endswith(".lora_down.weight")]
    ranks = sorted({int(v.shape[0]) for v in downs})
    return f"{len(downs)} layers, rank {'/'.join(map(str, ranks)) or '?'}"


@dataclass(frozen=True, eq=False)
class Concept:
    trigger: str
    prompt: str
    lora: dict  # ComfyUI-native LoRA keys -> tensor (the shared LoRA after this concept)
    fisher: dict  # trainable LoRA key -> accumulated diagonal Fisher F⁽ⁿ⁾; {} for sequential LoRA
    record: dict = field(default_factory=dict)  # how the concept was added (JSON-serializable)


@dataclass(frozen=True, eq=False)
class ConceptPool:
    base_fingerprint: str
    method: str
    pretrained_prompt: str
    temperature: float = 1.0
    concepts: tuple = ()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if not self.temperature > 0:
            raise ValueError(f"the DC score temperature must be > 0, got {self.temperature}")
        if not self.pretrained_prompt.strip():
            raise ValueError("the pretrained concept's prompt c_0 is empty: give a generic prompt such as 'a photo'")

    # ---- reading ------------------------------------------------------------------------------
    @property
    def fisher_source(self) -> str | None:
        return FISHER_SOURCES[self.method]

    @property
    def triggers(self) -> list[str]:
        return [c.trigger for c in self.concepts]

    @property
    def latest(self) -> Concept | None:
        return self.concepts[-1] if self.concepts else None

    def __len__(self) -> int:
        return len(self.concepts)

    def index_of(self, trigger: str) -> int:
        wanted = normalize_trigger(trigger)
        for i, c in enumerate(self.concepts):
            if normalize_trigger(c.trigger) == wanted:
                return i
        raise KeyError(f"no concept {trigger!r} in this pool (it holds {self.triggers})")

    def describe(self) -> str:
        head = f"concept pool ({self.method}, base {self.base_fingerprint}, c_0 = {self.pretrained_prompt!r}, τ = {self.temperature:g})"
        if not self.concepts:
            return head + ": empty"
        lines = [head + f": {len(self.concepts)} concept(s), LoRA {describe_lora(self.concepts[0].lora)}"]
        lines += [f"  {i + 1}. {c.trigger!r}: {c.prompt!r}" for i, c in enumerate(self.concepts)]
        return "\n".join(lines)

    # ---- checks -------------------------------------------------------------------------------
    def check_base(self, fingerprint: str, what: str = "this model") -> None:
        if fingerprint != self.base_fingerprint:
            raise ValueError(
                f"the concept pool was made on another base model (fingerprint {self.base_fingerprint}; {what} is "
                f"{fingerprint}): use the checkpoint the pool was made with, or start a new pool for this one"
            )

    def check_new_trigger(self, trigger: str) -> str:
        trigger = trigger.strip()
        if not trigger:
            raise ValueError("the concept's trigger is empty: name it (e.g. 'sks dog'); triggers identify concepts in the pool")
        if normalize_trigger(trigger) in {normalize_trigger(t) for t in self.triggers}:
            raise ValueError(f"the pool already holds a concept {trigger!r} (it holds {self.triggers}): "
                             "give the new concept its own trigger")
        return trigger

    def check_lora(self, lora: dict, what: str = "the LoRA") -> None:
        """`lora` must have the pool's layers, shapes and alpha (the pool's LoRA is one LoRA, trained on)."""
        if not trainable_keys(lora):
            raise ValueError(f"{what} has no LoRA layers (no '.lora_down.weight' keys)")
        check_finite(lora, what)
        if not self.concepts:
            return
        ours, theirs = self.concepts[0].lora, lora
        if lora_shape(ours) != lora_shape(theirs):
            raise ValueError(
                f"{what} ({describe_lora(theirs)}) does not match the pool's LoRA ({describe_lora(ours)}): train every "
                "concept of a pool with the same rank, alpha and target layers"
            )
        for key in ours:
            if key.endswith(".alpha") and not torch.equal(ours[key].float(), theirs[key].float()):
                raise ValueError(f"{what} has alpha {float(theirs[key]):g}, the pool's LoRA {float(ours[key]):g}: "
                                 "train every concept of a pool with the same alpha")

    # ---- growing ------------------------------------------------------------------------------
    def with_concept(self, concept: Concept) -> "ConceptPool":
        trigger = self.check_new_trigger(concept.trigger)
        self.check_lora(concept.lora, f"the LoRA of {trigger!r}")
        expected = trainable_keys(concept.lora) if self.fisher_source else []
        if sorted(concept.fisher) != expected:
            raise ValueError(f"the Fisher of {trigger!r} does not cover the LoRA's parameters")
        stored = Concept(trigger, concept.prompt, _cpu(concept.lora), _cpu(concept.fisher), dict(concept.record))
        return ConceptPool(self.base_fingerprint, self.method, self.pretrained_prompt, self.temperature,
                           (*self.concepts, stored))

    def extends(self, other: "ConceptPool") -> bool:
        """True when this pool is `other` plus zero or more concepts (same base, settings and first concepts)."""
        return (self.base_fingerprint == other.base_fingerprint and self.method == other.method
                and self.pretrained_prompt == other.pretrained_prompt and self.temperature == other.temperature
                and len(other.concepts) <= len(self.concepts)
                and all(a.trigger == b.trigger for a, b in zip(self.concepts, other.concepts)))

    # ---- files --------------------------------------------------------------------------------
    def to_file_contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {}
        for i, c in enumerate(self.concepts):  # sorted keys: the same pool always writes the same bytes
            tensors.update({f"concepts.{i}.lora.{k}": c.lora[k] for k in sorted(c.lora)})
            tensors.update({f"concepts.{i}.fisher.{k}": c.fisher[k] for k in sorted(c.fisher)})
        pool = {
            "format": FORMAT,
            "base_model_fingerprint": self.base_fingerprint,
            "method": self.method,
            "pretrained_prompt": self.pretrained_prompt,
            "score_temperature": self.temperature,
            "concepts": [{"trigger": c.trigger, "prompt": c.prompt, "record": c.record} for c in self.concepts],
        }
        # one metadata entry: safetensors writes several in no fixed order, one always gives the same bytes
        return tensors, {METADATA_KEY: pool}

    def save(self, path) -> pathlib.Path:
        """Atomically write the pool to `path` (a temporary file renamed over it)."""
        path = pathlib.Path(path)
        tensors, metadata = self.to_file_contents()
        save_safetensors_atomic(tensors, path, metadata)
        return path


def check_trained_against(pool: ConceptPool, metadata: dict | None) -> None:
    """A Driftless LoRA records its regularizers: the new concept must have been trained on this pool."""
    if not metadata or "regularizers" not in metadata:
        if pool.concepts:
            logging.warning("Driftless: the LoRA carries no training record; cannot check it was trained against this pool")
        return
    fingerprint = metadata.get("base_model_fingerprint")
    if fingerprint and fingerprint != pool.base_fingerprint:
        raise ValueError(f"the LoRA was trained on another base model (fingerprint {fingerprint}) than the pool's "
                         f"({pool.base_fingerprint})")
    if not pool.concepts:
        return
    continual = [r for r in metadata["regularizers"] if r.get("name") == "continual"]
    if not continual:
        raise ValueError(
            f"the LoRA was trained without Driftless Continual Regularizer, but the pool already holds {pool.triggers}: "
            "train the new concept with the continual regularizer on this pool (it starts from the pool's LoRA)"
        )
    trained_on = continual[0].get("pool_concepts")
    if trained_on != pool.triggers or continual[0].get("method") != pool.method:
        raise ValueError(
            f"the LoRA was trained against a pool holding {trained_on} ({continual[0].get('method')}), this pool holds "
            f"{pool.triggers} ({pool.method}): add it to the pool it was trained against"
        )


def normalize_trigger(trigger: str) -> str:
    return " ".join(trigger.split()).casefold()


def _cpu(tensors: dict) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in tensors.items()}


def load_pool(path) -> ConceptPool:
    """Read and check a pool file; any problem is a ValueError naming the file and what is wrong."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"no concept pool file at {path}")
    tensors, raw = load_safetensors(path)
    check_finite(tensors, f"concept pool file {path}")
    damaged = lambda why: ValueError(f"{path} is a damaged concept pool ({why}); use another copy or start a new pool")  # noqa: E731
    if METADATA_KEY not in raw:
        raise ValueError(f"{path} is not a Driftless concept pool (no {METADATA_KEY!r} metadata; a LoRA or another file?)")
    try:
        meta = json.loads(raw[METADATA_KEY])
    except (TypeError, ValueError):
        raise damaged("its metadata is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Driftless concept pool of this version (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    try:
        pool = ConceptPool(str(meta["base_model_fingerprint"]), meta["method"], meta["pretrained_prompt"],
                           float(meta["score_temperature"]))
        entries = list(meta["concepts"])
        records = [(str(e["trigger"]), str(e["prompt"]), dict(e.get("record", {}))) for e in entries]
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(f"metadata: {e}") from None
    used = set()
    for i, (trigger, prompt, record) in enumerate(records):
        lora = _section(tensors, f"concepts.{i}.lora.")
        fisher = _section(tensors, f"concepts.{i}.fisher.")
        used.update(f"concepts.{i}.lora.{k}" for k in lora)
        used.update(f"concepts.{i}.fisher.{k}" for k in fisher)
        if not lora:
            raise damaged(f"concept {i + 1} ({trigger!r}) has no LoRA tensors")
        try:
            pool = pool.with_concept(Concept(trigger, prompt, lora, fisher, record))
        except ValueError as e:
            raise damaged(f"concept {i + 1}: {e}") from None
        for key, f in fisher.items():
            if f.shape != lora[key].shape or not torch.isfinite(f).all() or (f < 0).any():
                raise damaged(f"the Fisher of concept {i + 1} at {key} is not a finite, non-negative tensor of the LoRA's shape")
    extra = sorted(set(tensors) - used)
    if extra:
        raise damaged(f"{len(extra)} tensors belong to no concept, first {extra[0]!r}")
    return pool


def _section(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
