"""The papers' recipes (trainers/recipes.py): the values read from each source, valid settings, and the docs table."""

import pathlib

import pytest

from driftless.trainers.recipes import RECIPES, markdown

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "papers.md"


def test_recipes_carry_the_values_their_sources_publish():
    """Spot checks against the sources as read by hand (P&P and DCO READMEs and scripts, diffusers' DreamBooth)."""
    sd15 = RECIPES["pnp-lora-sd15"].train_config()
    assert (sd15.rank, sd15.alpha, sd15.learning_rate, sd15.steps, sd15.batch_size) == (16, 27.0, 1e-4, 500, 4)
    assert (sd15.optimizer, sd15.weight_decay, sd15.dtype, sd15.null_prompt_dropout) == ("AdamW", 0.0, "fp32", 0.0)
    assert RECIPES["pnp-lora-sd15"].settings() == {"form": "code", "weight": 1e-7}
    sdxl = RECIPES["pnp-lora-sdxl"].train_config()
    assert (sdxl.rank, sdxl.alpha, sdxl.learning_rate, sdxl.batch_size, sdxl.grad_accumulation) == (4, 4.0, 5e-4, 1, 4)
    assert (sdxl.weight_decay, sdxl.dtype) == (1e-4, "fp16") and RECIPES["pnp-lora-sdxl"].settings()["weight"] == 1e-6
    dco = RECIPES["dco"].train_config()
    assert (dco.rank, dco.alpha, dco.learning_rate, dco.steps, dco.weight_decay) == (32, 32.0, 5e-5, 2000, 1e-4)
    assert RECIPES["dco"].settings() == {"beta": 1000.0, "mode": "replace", "weight": 1.0}
    assert RECIPES["apt"].settings()["temperature"] == 1000.0 and RECIPES["apt"].settings()["indicator_gap"] == "absolute"
    db = RECIPES["dreambooth-lora"].train_config()
    assert (db.rank, db.learning_rate, db.steps, db.weight_decay) == (4, 1e-4, 500, 0.01)
    assert RECIPES["dreambooth-lora"].settings() == {"weight": 1.0}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_builds_valid_settings_and_its_regularizer(name):
    import torch

    recipe = RECIPES[name]
    config = recipe.train_config(steps=7)  # an override wins
    assert config.steps == 7 and config.problems() == []
    assert all(recipe.train[k].source for k in recipe.train)
    args = (torch.zeros(1, 4, 8, 8), [], "a photo of a dog") if recipe.regularizer == "prior_preservation" else ()
    regularizer = recipe.make_regularizer(*args)
    assert regularizer.name == recipe.regularizer
    assert {k: v for k, v in regularizer.settings().items() if k in recipe.settings()} == recipe.settings()


def test_the_docs_show_the_recipes_as_the_code_holds_them():
    text = DOCS.read_text()
    assert markdown() in text, "docs/papers.md#recipes is out of date: paste trainers.recipes.markdown() there"
