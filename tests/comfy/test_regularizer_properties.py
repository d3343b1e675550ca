"""Every registered regularizer through the same properties, table-driven (a new method adds a row to METHODS):

(a) at weight 0 it trains exactly what plain training trains (same seed, same LoRA and losses);
(b) resume is exact: N steps straight equal N/2 steps, a saved state, and the rest;
(c) it trains on each tiny model family: finite losses, and the LoRA moves.

`zero` builds the method with its terms off, where "weight 0" is more than one setting: DCO in mode add with
weight 0 (mode replace makes DCO the whole loss, so weight 0 there trains nothing), APT with both weights 0 and
adaptive adjustment off, continual with EWC weight 0 on an empty pool (a pool with concepts starts the run from
their LoRA, which plain training does not).
"""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from driftless.trainers.config import TrainConfig
from driftless.trainers.regularizers import REGULARIZERS

FAST = dict(rank=4, alpha=4.0, learning_rate=5e-3, null_prompt_dropout=0.0, targets="attention")
FAMILIES = ("sd15-tiny", "sdxl-tiny")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster on a shared 2-core machine, and keeps the sums in one order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _encoder(clip):
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))


def _pool(model, clip, data, concepts: int):
    """An EWC-DC pool on `model` holding `concepts` concepts, each a 2-step LoRA with a 2-draw Fisher."""
    from driftless.lora.files import lora_metadata
    from driftless.lora.fingerprint import model_fingerprint
    from driftless.trainers.continual.learn import add_concept
    from driftless.trainers.continual.pool import ConceptPool
    from driftless.trainers.loop import train_lora

    pool = ConceptPool(model_fingerprint(model.model.diffusion_model), "EWC-DC", "a photo", 1.0)
    config = TrainConfig(steps=2, **FAST)
    for i in range(concepts):
        result = train_lora(model, data, config)
        metadata = lora_metadata(config, result.base_fingerprint, result.steps_done, data.captions, [])
        pool = add_concept(pool, model, result.adapter.lora_state_dict(), data, _encoder(clip), trigger=f"zq{i} cat",
                           draws=2, k=1, seed=i, metadata=metadata)
    return pool


def _class_examples(clip, data):
    latents = torch.randn(tuple(data.latents.shape), generator=torch.Generator().manual_seed(5))
    return latents, _encoder(clip)("a photo of a cat")


def anchor(model, clip, data, zero):
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor

    return ParameterAnchor(weight=0.0) if zero else ParameterAnchor(weight=0.5)


def dco(model, clip, data, zero):
    from driftless.trainers.regularizers.dco import DCO

    return DCO(weight=0.0, mode="add") if zero else DCO()


def apt(model, clip, data, zero):
    from driftless.trainers.regularizers.apt import APT

    if zero:
        return APT(adaptive_adjustment=False, representation_weight=0.0, attention_weight=0.0)
    return APT(bins=2)  # two bins, so the adaptive adjustment acts within a few steps


def prior(model, clip, data, zero):
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation

    latents, conditioning = _class_examples(clip, data)
    return PriorPreservation(latents, conditioning, "a photo of a cat", weight=0.0 if zero else 1.0)


def continual(model, clip, data, zero):
    from driftless.trainers.regularizers.continual import Continual

    encode = _encoder(clip)
    pool = _pool(model, clip, data, 0 if zero else 1)
    return Continual(pool, [encode(c.prompt) for c in pool.concepts], encode(pool.pretrained_prompt),
                     ewc_weight=0.0 if zero else 1000.0)


@dataclass(frozen=True)
class Method:
    build: Callable  # (MODEL, CLIP, TrainingData, zero: bool) -> Regularizer


METHODS = {
    "parameter_anchor": Method(anchor),
    "dco": Method(dco),
    "apt": Method(apt),
    "prior_preservation": Method(prior),
    "continual": Method(continual),
}


def test_every_registered_regularizer_has_a_row():
    assert set(METHODS) == set(REGULARIZERS), "add the new method to METHODS"


def _train(model, data, config, regularizers, **kwargs):
    from driftless.trainers.loop import train_lora

    return train_lora(model, data, config, regularizers, **kwargs)


def _assert_same_training(a, b):
    """Bit-identical LoRA and losses (CPU, fp32, one thread)."""
    sa, sb = a.adapter.lora_state_dict(), b.adapter.lora_state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[key], sb[key]) for key in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]
    assert a.losses == b.losses


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weight_zero_equals_plain_training(tiny_data, name):
    model, clip, _, data = tiny_data()
    config = TrainConfig(steps=3, **FAST)
    method = METHODS[name]
    plain = _train(model, data, config, [])
    zero = _train(model, data, config, [method.build(model, clip, data, True)])
    _assert_same_training(zero, plain)
    active = _train(model, data, config, [method.build(model, clip, data, False)])  # the property is not vacuous
    assert any(not torch.equal(v, plain.adapter.lora_state_dict()[k]) for k, v in active.adapter.lora_state_dict().items())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_is_exact(tiny_data, tmp_path, name):
    from driftless.trainers.state import ResumeState, save_state

    model, clip, _, data = tiny_data(n=3)
    config = TrainConfig(steps=4, checkpoint_every=2, **FAST)
    build = METHODS[name].build
    straight = _train(model, data, config, [build(model, clip, data, False)])
    path = tmp_path / "half.train-state"
    _train(model, data, TrainConfig(**{**config.as_dict(), "steps": 2}), [build(model, clip, data, False)],
           on_checkpoint=lambda **state: save_state(path, **state))
    resumed = _train(model, data, config, [build(model, clip, data, False)], resume=ResumeState(path))
    _assert_same_training(resumed, straight)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_trains_on_each_model_family(tiny_data, name, family):
    model, clip, _, data = tiny_data(family)
    from driftless.trainers.loop import TrainingRun

    config = TrainConfig(steps=2, **FAST)
    before = {k: v.clone() for k, v in TrainingRun(model, data, config, [METHODS[name].build(model, clip, data, False)])
              .adapter.lora_state_dict().items()}  # where the run starts (the pool's LoRA for continual)
    result = _train(model, data, config, [METHODS[name].build(model, clip, data, False)])
    assert all(torch.isfinite(torch.tensor(result.losses)))
    after = result.adapter.lora_state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after)


def test_node_inputs_are_the_methods_settings(comfy_host):
    """Each regularizer node shows its method's settings as defined once (KNOBS): default, range, options."""
    from driftless.nodes import continual as continual_nodes
    from driftless.nodes import regularizers as nodes
    from driftless.trainers.regularizers import apt, continual, dco, parameter_anchor, prior_preservation

    pairs = [(nodes.ParameterAnchor, parameter_anchor.KNOBS), (nodes.DCO, dco.KNOBS), (nodes.APT, apt.KNOBS),
             (nodes.PriorPreservation, prior_preservation.KNOBS), (continual_nodes.ContinualRegularizer, continual.KNOBS)]
    for node, knobs in pairs:
        inputs = {spec.id: spec for spec in node.define_schema().inputs}
        for name, knob in knobs.items():
            spec = inputs[name]
            assert spec.default == knob.default, (node.__name__, name)
            assert spec.tooltip.startswith(knob.help), (node.__name__, name)
            if knob.options is not None:
                assert list(spec.options) == list(knob.options)
            elif not isinstance(knob.default, bool):
                assert (spec.min, spec.max) == (knob.min, knob.max), (node.__name__, name)
    # the classes built without arguments take the same defaults
    assert vars(apt.APT())["lambda_attn"] == apt.KNOBS["attention_weight"].default
    assert parameter_anchor.ParameterAnchor().weight == parameter_anchor.KNOBS["weight"].default
