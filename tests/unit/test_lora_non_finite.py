"""A LoRA holding NaN or Inf is refused wherever one enters or leaves, naming the file (or input) and a layer.

Such a LoRA samples black images, and as a starting point it made training fail with a message blaming the
learning rate. These tests cover the file and state entry points (no ComfyUI); tests/comfy/test_lora_non_finite.py
covers the nodes and the guider.
"""

import math

import pytest
import torch
from driftless.lora.files import NonFiniteLora, check_finite, load_lora, non_finite_tensors, save_lora
from driftless.lora.storage import save_safetensors_atomic

LAYER = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def _lora(poison: float | None = None, key: str = f"{LAYER}.lora_up.weight") -> dict:
    lora = {f"{LAYER}.lora_down.weight": torch.randn(4, 32), f"{LAYER}.lora_up.weight": torch.randn(32, 4),
            f"{LAYER}.alpha": torch.tensor(4.0)}
    if poison is not None:
        lora[key] = lora[key].clone()
        lora[key][1, 2] = poison
        lora[key][3, 0] = poison
    return lora


def test_finite_loras_pass_and_integer_tensors_are_not_inspected():
    check_finite(_lora(), "x")
    assert non_finite_tensors({**_lora(), "steps": torch.tensor([3], dtype=torch.int64)}) == []


@pytest.mark.parametrize("poison", [math.nan, math.inf, -math.inf])
def test_the_message_names_the_source_a_layer_and_how_much(poison):
    with pytest.raises(NonFiniteLora) as caught:
        check_finite(_lora(poison), "LoRA file /x/broken.safetensors")
    text = str(caught.value)
    assert text.startswith("LoRA file /x/broken.safetensors holds NaN or Inf in 1 of its 3 tensors")
    assert f"first: {LAYER}.lora_up.weight, 2 of 128 values" in text
    assert "earlier checkpoint" in text and "lower learning rate" in text  # what to do
    assert isinstance(caught.value, ValueError)  # ComfyUI shows it as the node's error


def test_save_refuses_and_writes_nothing(tmp_path):
    with pytest.raises(NonFiniteLora, match=rf"the LoRA to be written to {tmp_path}/sub/broken.safetensors .*{LAYER}"):
        save_lora(_lora(math.nan), tmp_path, "sub/broken")
    assert not list(tmp_path.rglob("*"))  # no file, no temporary, no folder
    assert save_lora(_lora(), tmp_path, "fine").is_file()


def test_load_refuses_a_file_naming_it(tmp_path):
    path = tmp_path / "broken.safetensors"
    save_safetensors_atomic(_lora(math.inf, key=f"{LAYER}.lora_down.weight"), path)
    with pytest.raises(NonFiniteLora, match=rf"LoRA file {path} holds NaN or Inf .*first: {LAYER}.lora_down.weight"):
        load_lora(path)
    save_safetensors_atomic(_lora(), path)
    assert set(load_lora(path)) == set(_lora())


def test_a_training_state_with_a_non_finite_lora_is_refused_on_resume(tmp_path):
    from driftless.trainers.state import FORMAT, ResumeState

    path = tmp_path / "run" / "step_00000002.train-state"
    tensors = {f"lora.{k}": v for k, v in _lora(math.nan).items()}
    save_safetensors_atomic(tensors, path, {"format": FORMAT, "step": 2})
    with pytest.raises(NonFiniteLora, match=rf"the LoRA of training state {path} .*{LAYER}.lora_up.weight"):
        ResumeState(path).lora_state()


def test_a_concept_pool_refuses_a_non_finite_concept_lora():
    from driftless.trainers.continual.pool import ConceptPool

    pool = ConceptPool("fingerprint", "sequential LoRA", "a photo")
    with pytest.raises(NonFiniteLora, match=rf"the LoRA of 'sks dog' holds NaN or Inf .*{LAYER}.lora_up.weight"):
        pool.check_lora(_lora(math.nan), "the LoRA of 'sks dog'")
    pool.check_lora(_lora(), "the LoRA of 'sks dog'")
