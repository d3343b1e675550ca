"""Every registered regularizer through the same properties, table-driven (a new method adds a row to CASES):

(a) at weight 0 it trains exactly what plain training trains: same seed, bit-identical LoRA and losses;
(b) resume is exact: N steps straight equal N/2 steps, a saved state, and the rest (bit-identical);
    (a) and (b) on sd15-tiny and on the DiTs (sd35-tiny, flux-dev-tiny);
(c) it trains on each tiny model family (sd15-tiny, sdxl-tiny, sd35-tiny, flux-dev-tiny): finite losses, and the
    LoRA moves;

and every regularizer node shows its method's config: defaults, ranges, options and help, walked from the schema.

Each row builds its method with small but non-trivial settings, and says what "weight 0" is for it (`zero`), where
one setting is not enough or there is none.
"""

import functools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from driftless.trainers.config import TrainConfig
from driftless.trainers.regularizers import REGULARIZERS, Regularizer

FAST = dict(rank=4, alpha=4.0, learning_rate=5e-3, null_prompt_dropout=0.0, targets="attention")  # batch size 1
DITS = ("sd35-tiny", "flux-dev-tiny")
FAMILIES = ("sd15-tiny", "sdxl-tiny", *DITS)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/comfy/conftest.py: bit-identical sums, and faster


class World:
    """One tiny model and its data, with what some methods need built once, on first use: class images, a concept
    pool holding one concept (a 2-step LoRA, a 2-draw Fisher) and a teacher LoRA trained against that pool."""

    def __init__(self, model, clip, data):
        self.model, self.clip, self.data = model, clip, data

    def encode(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    @functools.cached_property
    def class_examples(self):
        latents = torch.randn(tuple(self.data.latents.shape), generator=torch.Generator().manual_seed(5))
        return latents, self.encode("a photo of a cat"), "a photo of a cat"

    @functools.cached_property
    def pool(self):
        from driftless.lora.files import lora_metadata
        from driftless.lora.fingerprint import model_fingerprint
        from driftless.trainers.continual.learn import add_concept
        from driftless.trainers.continual.pool import ConceptPool
        from driftless.trainers.loop import train_lora

        config = TrainConfig(steps=2, **FAST)
        result = train_lora(self.model, self.data, config)
        metadata = lora_metadata(config, result.base_fingerprint, result.steps_done, self.data.captions, [])
        empty = ConceptPool(model_fingerprint(self.model.model.diffusion_model), "EWC-DC", "a photo", 1.0)
        return add_concept(empty, self.model, result.adapter.lora_state_dict(), self.data, self.encode,
                           trigger="zq cat", draws=2, k=1, decay=0.9, seed=0,
                           metadata=metadata)

    def continual(self, **overrides):
        from driftless.trainers.regularizers.continual import Continual

        pool = self.pool
        return Continual(pool, [self.encode(c.prompt) for c in pool.concepts], self.encode(pool.pretrained_prompt),
                         concepts_per_score=1, **overrides)

    @functools.cached_property
    def teacher(self):
        """The LoRA of the pool's next concept (2 steps against the pool), as Train LoRA hands it on."""
        from driftless.lora.files import LoraWeights, lora_metadata
        from driftless.trainers.loop import train_lora

        config, regularizers = TrainConfig(steps=2, **FAST), [self.continual()]
        result = train_lora(self.model, self.data, config, regularizers)
        return LoraWeights(result.adapter.lora_state_dict(), lora_metadata(
            config, result.base_fingerprint, result.steps_done, self.data.captions, regularizers))


class StartFrom(Regularizer):
    """Plain training from a given LoRA, started the way a regularizer starts a run (the reference for continual)."""

    name = "test_start_from"

    def __init__(self, lora: dict):
        self.lora = lora

    def initial_lora(self, config, base_fingerprint):
        return self.lora

    def loss(self, ctx):
        return ctx.x0.new_zeros(())


def _anchor(world, **settings):
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor

    return ParameterAnchor(**settings)


def _dco(world, **settings):
    from driftless.trainers.regularizers.dco import DCO

    return DCO(**settings)


def _apt(world, **settings):
    from driftless.trainers.regularizers.apt import APT

    return APT(**settings)


def _prior(world, **settings):
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation

    return PriorPreservation(*world.class_examples, **settings)


@dataclass(frozen=True)
class Case:
    method: str  # its name in REGULARIZERS
    build: Callable  # (World) -> the regularizer, small but non-trivial settings
    zero: Callable | None  # (World) -> the method with its terms off; None where no setting is plain training
    zero_means: str  # what "weight 0" is for this method, or why there is none
    plain: Callable = lambda world: []  # (World) -> the regularizers of the plain training it must equal at weight 0


CASES = {
    "parameter_anchor": Case(
        "parameter_anchor", lambda w: _anchor(w, weight=0.5), lambda w: _anchor(w, weight=0.0), "weight 0"),
    "dco": Case(
        "dco", lambda w: _dco(w), lambda w: _dco(w, weight=0.0, mode="add"),
        "mode add with weight 0 (in the default mode replace, L_DCO is the whole loss: weight 0 trains nothing)"),
    "apt": Case(
        "apt", lambda w: _apt(w, bins=2, adaptive_adjustment=True),  # two bins: the adjustment acts within a few steps
        lambda w: _apt(w, adaptive_adjustment=False, representation_weight=0.0, attention_weight=0.0),
        "all three parts off: adaptive adjustment off, representation and attention weights 0"),
    "apt (per head)": Case(
        "apt", lambda w: _apt(w, bins=2, adaptive_adjustment=True, attention_maps="per head"), None,
        "none of its own: the apt row's zero turns attention alignment off, per head or not"),
    "prior_preservation": Case(
        "prior_preservation", lambda w: _prior(w, weight=1.0), lambda w: _prior(w, weight=0.0), "weight 0"),
    "continual": Case(
        "continual", lambda w: w.continual(ewc_weight=1000.0), lambda w: w.continual(ewc_weight=0.0),
        "EWC weight 0 on a pool holding one concept: the run starts from that concept's LoRA, so the plain training "
        "it equals starts there too", plain=lambda w: [StartFrom(w.pool.latest.lora)]),
    "continual (distill)": Case(
        "continual", lambda w: w.continual(ewc_weight=1000.0, distill=True, teacher=w.teacher), None,
        "none: DSC replaces the denoising loss, so with both its weights 0 it trains nothing"),
}


def test_every_registered_regularizer_has_a_row():
    assert {case.method for case in CASES.values()} == set(REGULARIZERS), "add the new method to CASES"


@pytest.fixture(scope="module")
def built(comfy_host):
    """(MODEL, CLIP, TrainingData) per (family, n), built once for this module (SD3.5's T5 keeps XXL's width: ~3 s a
    build): n seeded random 64-px images captioned 'a photo of sks cat'. Training never changes the MODEL it is given."""
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData

    cache, models = {}, {}

    def get(family, n):
        if (family, n) not in cache:
            if family not in models:
                models[family] = build_tiny_model(family, 0)
            model, clip, vae = models[family]
            encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
            images = torch.rand(n, 64, 64, 3, generator=torch.Generator().manual_seed(n))
            data = TrainingData(vae.encode(images), [encode("a photo of sks cat")] * n, encode(""), ["a photo of sks cat"] * n)
            cache[family, n] = (model, clip, data)
        return cache[family, n]

    return get


@pytest.fixture
def world(built):
    """A fresh World on a tiny model of the family the test names (sd15-tiny unless parametrized), n images."""

    def make(family="sd15-tiny", n=2):
        return World(*built(family, n))

    return make


def _train(world, config, regularizers, **kwargs):
    from driftless.trainers.loop import train_lora

    return train_lora(world.model, world.data, config, regularizers, **kwargs)


def _lora(result) -> dict:
    return result.adapter.lora_state_dict()


def _assert_same_training(a, b):
    """Bit-identical LoRA and losses (CPU, fp32, one thread)."""
    sa, sb = _lora(a), _lora(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[key], sb[key]) for key in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]
    assert a.losses == b.losses


@pytest.mark.parametrize("family", ["sd15-tiny", *DITS])
@pytest.mark.parametrize("case", [name for name, case in CASES.items() if case.zero is not None])
def test_weight_zero_equals_plain_training(world, case, family):
    case, w = CASES[case], world(family)
    config = TrainConfig(steps=3, **FAST)
    plain = _train(w, config, case.plain(w))
    _assert_same_training(_train(w, config, [case.zero(w)]), plain)
    active = _lora(_train(w, config, [case.build(w)]))  # the property is not vacuous: the same run with the term on
    assert any(not torch.equal(v, _lora(plain)[k]) for k, v in active.items())


@pytest.mark.parametrize("family", ["sd15-tiny", *DITS])
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_is_exact(world, tmp_path, case, family):
    from driftless.trainers.state import ResumeState, save_state

    build, w = CASES[case].build, world(family, n=3)
    config = TrainConfig(steps=4, checkpoint_every=2, **FAST)
    straight = _train(w, config, [build(w)])
    path = tmp_path / "half.train-state"
    _train(w, TrainConfig(**{**config.as_dict(), "steps": 2}), [build(w)], on_checkpoint=lambda **s: save_state(path, **s))
    resumed = _train(w, config, [build(w)], resume=ResumeState(path))
    _assert_same_training(resumed, straight)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_trains_on_each_model_family(world, case, family):
    from driftless.trainers.loop import TrainingRun

    build, w = CASES[case].build, world(family)
    config = TrainConfig(steps=2, **FAST)
    start = {k: v.clone() for k, v in TrainingRun(w.model, w.data, config, [build(w)]).adapter.lora_state_dict().items()}
    result = _train(w, config, [build(w)])  # `start`: where the run begins (the pool's or the teacher's LoRA)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(v, start[k]) for k, v in _lora(result).items())


# ---- the nodes show each method's config -------------------------------------------------------------------------

def _configs() -> dict:
    """node_id -> the config class its inputs are built from."""
    from driftless.trainers.regularizers.apt import APTConfig
    from driftless.trainers.regularizers.continual import ContinualConfig
    from driftless.trainers.regularizers.dco import DCOConfig
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchorConfig
    from driftless.trainers.regularizers.prior_preservation import PriorPreservationConfig

    return {"DriftlessParameterAnchor": ParameterAnchorConfig, "DriftlessDCO": DCOConfig, "DriftlessAPT": APTConfig,
            "DriftlessPriorPreservation": PriorPreservationConfig, "DriftlessContinualRegularizer": ContinualConfig}


def _regularizer_nodes() -> dict:
    """node_id -> node class, for every node of the pack that outputs a regularizer chain."""
    from driftless.nodes import all_nodes
    from driftless.nodes.train_lora import REGULARIZER

    return {n.define_schema().node_id: n for n in all_nodes()
            if any(o.get_io_type() == REGULARIZER.io_type for o in n.define_schema().outputs)}


def test_every_regularizer_node_shows_its_methods_config(comfy_host):
    """Walk each regularizer node's schema: every setting of the method's config is an input of the right kind with
    the config's default, range, step, options and help; every input has a tooltip."""
    from comfy_api.latest import io

    from driftless.trainers.regularizers.knobs import knobs

    nodes, configs = _regularizer_nodes(), _configs()
    assert set(nodes) == set(configs), "a regularizer node without its config in _configs (or the reverse)"
    for node_id, node in nodes.items():
        inputs = {spec.id: spec for spec in node.define_schema().inputs}
        assert all(spec.tooltip for spec in inputs.values()), (node_id, [k for k, s in inputs.items() if not s.tooltip])
        for name, knob in knobs(configs[node_id]).items():
            where, spec = (node_id, name), inputs[name]
            assert spec.default == knob.default and type(spec.default) is type(knob.default), where
            assert spec.tooltip.startswith(knob.help), where
            if knob.options is not None:
                assert isinstance(spec, io.Combo.Input) and list(spec.options) == list(knob.options), where
            elif isinstance(knob.default, bool):
                assert isinstance(spec, io.Boolean.Input), where
            elif isinstance(knob.default, int):
                assert isinstance(spec, io.Int.Input) and (spec.min, spec.max) == (knob.min, knob.max), where
            else:
                assert isinstance(spec, io.Float.Input), where
                assert (spec.min, spec.max, spec.step) == (knob.min, knob.max, knob.step), where


def test_each_node_at_its_defaults_builds_the_configs_defaults(tiny_data):
    """Executing a regularizer node with its widgets' defaults gives the regularizer a class builds without
    arguments: the node's wiring passes every setting where the config has it."""
    from driftless.lora.fingerprint import model_fingerprint
    from driftless.trainers.continual.pool import ConceptPool

    model, clip, _, data = tiny_data()
    links = {  # the node's non-widget inputs
        "DriftlessPriorPreservation": dict(clip=clip, class_latents={"samples": data.latents}),
        "DriftlessContinualRegularizer": dict(
            clip=clip, pool=ConceptPool(model_fingerprint(model.model.diffusion_model), "EWC-DC", "a photo", 1.0)),
    }
    configs = _configs()
    for node_id, node in _regularizer_nodes().items():
        widgets = {s.id: s.default for s in node.define_schema().inputs if getattr(s, "default", None) is not None}
        chain = node.execute(**widgets, **links.get(node_id, {})).result[0]
        assert len(chain) == 1 and chain[0].config == configs[node_id](), node_id
