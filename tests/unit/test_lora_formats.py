"""LoRA format conversion as plain key/tensor mapping: detection, alpha conventions, errors (no ComfyUI).

A hand-written layout stands in for a model (tests/comfy/test_lora_interop.py uses the real ones and
checks the numbers against diffusers + peft). The reference for every scale is ΔW = s · B · A with s
derived by hand from each format's convention.
"""

import json
import math

import pytest
import torch
from driftless.lora.files import LoraWeights, load_lora, save_lora
from driftless.lora.formats import (
    LoraDoesNotFit,
    UnknownLoraFormat,
    detect_format,
    export,
    read_layers,
    to_native,
)
from driftless.lora.formats.architecture import guess
from driftless.lora.formats.layers import LayerWeights, RowBlock, join_rows, split_rows
from driftless.lora.formats.layout import DiffusersPart, ModelLayout, UnetLayout

Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
K2 = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
CONV = "input_blocks.1.0.in_layers.2"
DIFFUSERS = {
    Q: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    K2: "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    CONV: "down_blocks.0.resnets.0.conv1",
}


def _layout(spelling="diffusers") -> UnetLayout:
    kohya = {}
    for module, name in DIFFUSERS.items():  # both spellings, as ComfyUI's key map lists them
        kohya["lora_unet_" + name.replace(".", "_")] = module
        kohya["lora_unet_" + module.replace(".", "_")] = module
    return UnetLayout(family="SD15", shapes={Q: (8, 8), K2: (8, 6), CONV: (8, 8, 3, 3)},
                      diffusers_names=dict(DIFFUSERS), kohya_names=kohya, kohya_spelling=spelling)


def _native(ranks=None, alphas=None, seed=0) -> dict:
    """Native LoRA tensors over the layout's three layers, random A and B."""
    g = torch.Generator().manual_seed(seed)
    ranks = ranks or {Q: 2, K2: 2, CONV: 3}
    alphas = alphas or {Q: 4.0, K2: 4.0, CONV: 1.5}
    out = {}
    for module, shape in _layout().shapes.items():
        r = ranks[module]
        out[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(r, *shape[1:], generator=g)
        out[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(shape[0], r, *([1] * (len(shape) - 2)), generator=g)
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(alphas[module])
    return out


def _delta(native: dict, module: str) -> torch.Tensor:
    """ΔW = (alpha / r) · up · down of one native layer (alpha = r when absent)."""
    down, up = native[f"diffusion_model.{module}.lora_down.weight"], native[f"diffusion_model.{module}.lora_up.weight"]
    alpha = float(native.get(f"diffusion_model.{module}.alpha", down.shape[0]))
    return alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1))


def _peft_file(scale_by, config: dict | None, seed=1):
    """PEFT-keyed tensors for the layout's layers, and the ΔW each should give under `scale_by(name, r)`."""
    g = torch.Generator().manual_seed(seed)
    tensors, want = {}, {}
    for module, name in DIFFUSERS.items():
        shape = _layout().shapes[module]
        r = 3 if module == CONV else 2
        a = torch.randn(r, *shape[1:], generator=g)
        b = torch.randn(shape[0], r, *([1] * (len(shape) - 2)), generator=g)
        tensors[f"unet.{name}.lora_A.weight"], tensors[f"unet.{name}.lora_B.weight"] = a, b
        want[module] = scale_by(name, r) * (b.flatten(1) @ a.flatten(1))
    metadata = {} if config is None else {"lora_adapter_metadata": {f"unet.{k}": v for k, v in config.items()}}
    return LoraWeights(tensors, metadata), want


# ---- detection -----------------------------------------------------------------------------------
def test_each_format_is_detected_and_text_encoder_layers_are_left_out():
    layout = _layout()
    native = _native()
    assert detect_format(native) == "comfyui"
    assert detect_format(export(native, layout, "diffusers")) == "diffusers"
    kohya = dict(export(native, layout, "kohya"))
    kohya["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(2, 4)
    assert detect_format(kohya) == "kohya"
    fmt, layers, left_out = read_layers(kohya)
    assert fmt == "kohya" and len(layers) == 3 and left_out == ["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    converted = to_native(kohya, layout)
    assert converted.metadata["left_out_keys"] == 1 and set(converted) == set(native)
    peft_bare = {k.removeprefix("unet."): v for k, v in export(native, layout, "diffusers").items()}
    peft_wrapped = {"base_model.model." + k: v for k, v in peft_bare.items()}
    assert detect_format(peft_bare) == detect_format(peft_wrapped) == "diffusers"


def test_unknown_layouts_list_the_formats_and_a_sample_of_keys():
    with pytest.raises(UnknownLoraFormat) as err:
        detect_format({f"blocks.{i}.weight": torch.zeros(1) for i in range(9)})
    text = str(err.value)
    assert "no LoRA layers found" in text and "Formats understood: comfyui: " in text
    assert "diffusers: " in text and "kohya: " in text
    assert "blocks.0.weight, blocks.1.weight" in text and "(9 keys in all)" in text


def test_mixed_layouts_and_other_adapter_kinds_are_named():
    layout = _layout()
    mixed = {**_native(), **export(_native(), layout, "kohya")}
    with pytest.raises(UnknownLoraFormat, match=r"mixes key layouts \(comfyui, kohya\)"):
        detect_format(mixed)
    loha = {"lora_unet_x.hada_w1_a": torch.zeros(1), "lora_unet_x.hada_w1_b": torch.zeros(1)}
    with pytest.raises(UnknownLoraFormat, match="LoHa adapter"):
        detect_format(loha)
    dora = {**_native(), f"diffusion_model.{Q}.dora_scale": torch.zeros(1)}
    with pytest.raises(UnknownLoraFormat, match="DoRA adapter"):
        detect_format(dora)


# ---- alpha and scale conventions -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["comfyui", "diffusers", "kohya"])
def test_export_then_import_is_exact_with_mixed_ranks_and_alphas(fmt):
    layout = _layout()
    native = _native()
    exported = export(native, layout, fmt)
    back = to_native(exported, layout)
    assert set(back) == set(native)
    assert all(torch.equal(back[k], native[k]) for k in native)
    assert back.metadata["lora_format"] == fmt


def test_diffusers_export_writes_a_peft_config_with_patterns():
    exported = export(_native(), _layout(), "diffusers")
    config = json.loads(exported.raw_metadata["lora_adapter_metadata"])
    assert exported.raw_metadata["format"] == "pt"
    assert config["unet.r"] == 2 and config["unet.lora_alpha"] == 4
    assert config["unet.rank_pattern"] == {DIFFUSERS[CONV]: 3}
    assert config["unet.alpha_pattern"] == {DIFFUSERS[CONV]: 1.5}
    assert sorted(config["unet.target_modules"]) == sorted(DIFFUSERS.values())


def test_kohya_export_names_and_metadata():
    exported = export(_native(), _layout(), "kohya")
    assert f"lora_unet_{DIFFUSERS[Q].replace('.', '_')}.alpha" in exported
    assert exported.raw_metadata["ss_network_dim"] == "2" and exported.raw_metadata["ss_network_alpha"] == "4"
    assert json.loads(exported.raw_metadata["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "1.5"}
    ldm = export(_native(), _layout("ldm"), "kohya")  # SDXL: sd-scripts keeps the LDM names
    assert f"lora_unet_{Q.replace('.', '_')}.lora_down.weight" in ldm


def _assert_deltas(native: dict, want: dict):
    for module, delta in want.items():
        torch.testing.assert_close(_delta(native, module), delta, rtol=1e-6, atol=1e-6)


def test_peft_lora_alpha_and_alpha_pattern():
    config = {"r": 2, "lora_alpha": 6, "alpha_pattern": {"attn2.to_k": 1}, "rank_pattern": {"conv1": 3}}
    alpha = lambda name, r: (1 if name.endswith("attn2.to_k") else 6) / r  # noqa: E731
    lora, want = _peft_file(alpha, config)
    _assert_deltas(to_native(lora, _layout()), want)


def test_peft_rslora_scales_by_the_square_root_of_the_rank():
    lora, want = _peft_file(lambda name, r: 6 / math.sqrt(r), {"r": 2, "lora_alpha": 6, "use_rslora": True})
    _assert_deltas(to_native(lora, _layout()), want)


def test_peft_without_a_config_means_scale_one_as_in_diffusers():
    lora, want = _peft_file(lambda name, r: 1.0, None)
    _assert_deltas(to_native(lora, _layout()), want)


def test_a_peft_adapter_config_beside_the_file_is_read(tmp_path):
    lora, want = _peft_file(lambda name, r: 5 / r, None)
    wrapped = LoraWeights({"base_model.model." + k.removeprefix("unet."): v for k, v in lora.items()})
    save_lora(wrapped, tmp_path, "adapter_model")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 5}))
    loaded = load_lora(tmp_path / "adapter_model.safetensors")
    assert loaded.metadata["adapter_config"]["lora_alpha"] == 5
    _assert_deltas(to_native(loaded, _layout()), want)
    save_lora(wrapped, tmp_path, "other_name")  # the sidecar belongs to adapter_model.safetensors only
    assert "adapter_config" not in load_lora(tmp_path / "other_name.safetensors").metadata


def test_per_layer_alpha_keys_in_a_peft_file_win():
    lora, want = _peft_file(lambda name, r: 1.0, {"r": 2, "lora_alpha": 6})
    lora = LoraWeights({**lora, f"unet.{DIFFUSERS[Q]}.alpha": torch.tensor(2.0)}, lora.metadata)
    want[Q] = want[Q] * 2.0 / 2  # alpha 2 over rank 2
    for module in (K2, CONV):
        want[module] = want[module] * 6 / (3 if module == CONV else 2)
    _assert_deltas(to_native(lora, _layout()), want)


def test_peft_suffixes_on_comfyui_layer_names():
    native = _native()
    generic = {}
    for key, value in native.items():
        if not key.endswith(".alpha"):
            generic[key.replace(".lora_down.weight", ".lora_A.weight").replace(".lora_up.weight", ".lora_B.weight")] = value
    assert detect_format(generic) == "diffusers"
    back = to_native(generic, _layout())
    assert all(torch.equal(back[k], native[k]) for k in native if not k.endswith(".alpha"))


def test_kohya_without_alpha_means_scale_one():
    exported = export(_native(), _layout(), "kohya")
    no_alpha = {k: v for k, v in exported.items() if not k.endswith(".alpha")}
    native = to_native(no_alpha, _layout())
    assert float(native[f"diffusion_model.{CONV}.alpha"]) == 3.0  # alpha = rank


def test_dora_and_bias_configs_are_refused():
    lora, _ = _peft_file(lambda name, r: 1.0, {"r": 2, "lora_alpha": 2, "use_dora": True})
    with pytest.raises(ValueError, match="DoRA"):
        to_native(lora, _layout())


# ---- fit and architecture --------------------------------------------------------------------------
def test_layers_the_model_lacks_or_shapes_that_differ_are_reported():
    layout = _layout()
    extra = {**_native(), "diffusion_model.nowhere.lora_down.weight": torch.zeros(2, 4),
             "diffusion_model.nowhere.lora_up.weight": torch.zeros(4, 2)}
    with pytest.raises(LoraDoesNotFit, match=r"does not fit this model: 3 of 4 LoRA layers match its modules "
                                             r"\(first missing: nowhere\)"):
        to_native(extra, layout)
    wrong = _native()
    wrong[f"diffusion_model.{Q}.lora_down.weight"] = torch.zeros(2, 5)
    with pytest.raises(LoraDoesNotFit, match=rf"1 with other shapes, e.g. {Q}: LoRA \[2, 5\] -> \[8, 2\], "
                                             r"the model's weight is \[8, 8\]"):
        to_native(wrong, layout)


def test_a_lora_for_another_architecture_says_which():
    sdxl_names = ["input_blocks.4.1.transformer_blocks.0.attn2.to_k", "middle_block.1.transformer_blocks.0.attn1.to_q"]
    lora = {}
    for name in sdxl_names:
        lora[f"diffusion_model.{name}.lora_down.weight"] = torch.zeros(4, 2048)
        lora[f"diffusion_model.{name}.lora_up.weight"] = torch.zeros(640, 4)
    with pytest.raises(LoraDoesNotFit, match=r"This is a comfyui LoRA for an SDXL-style UNet \(no attention at the first "
                                             r"level\), cross-attention width 2048 \(SDXL\); the model is SD1.5"):
        to_native(lora, _layout())
    flux = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)}
    with pytest.raises(LoraDoesNotFit, match="for a Flux-style transformer"):
        to_native(flux, _layout())


@pytest.mark.parametrize("names, kind", [
    (["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"], "sd1-unet"),
    (["lora_unet_input_blocks_1_1_proj_in"], "sd1-unet"),
    (["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"], "sdxl-unet"),
    (["lora_unet_down_blocks_1_resnets_0_conv1", "lora_unet_label_emb_0_0"], "sdxl-unet"),
    (["down_blocks.1.resnets.0.conv1"], "unet"),
    (["transformer.single_transformer_blocks.0.attn.to_q"], "flux"),
    (["joint_blocks.0.context_block.attn.qkv"], "sd3"),
    (["some.other.layer"], None),
])
def test_architecture_signs(names, kind):
    assert guess(names).kind == kind


def test_cross_attention_width_names_the_member():
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    sd1, sd2 = guess([name], {name: 768}), guess([name], {name: 1024})
    assert "SD1.x" in sd1.describe() and "SD2.x" in sd2.describe() and sd1.differs_from(sd2)
    assert not guess([name]).differs_from(sd1)  # an unknown width is no evidence


# ---- files -------------------------------------------------------------------------------------------
def test_raw_metadata_is_written_as_plain_strings(tmp_path):
    from driftless.lora.storage import load_safetensors

    exported = export(_native(), _layout(), "kohya")
    path = save_lora(exported, tmp_path, "k")
    _, raw = load_safetensors(path)
    assert raw["ss_network_module"] == "networks.lora"  # not JSON-quoted: sd-scripts' readers take it as is
    assert json.loads(raw["lora_format"]) == "kohya"


# ---- transformers (SD3, Flux): fused layers split into diffusers layers and joined back ------------------

QKV, LINEAR1, FINAL, PROJ = "double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "final_layer.adaLN_modulation.1", \
    "double_blocks.0.img_attn.proj"
H = 4  # hidden width of the hand-made Flux layout: qkv [3H, H], linear1 [3H + 4H, H]


def _flux_layout() -> ModelLayout:
    def blocks(names, prefix, sizes):
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return tuple(DiffusersPart(f"{prefix}.{n}", s, r) for n, s, r in zip(names, starts, sizes))

    return ModelLayout(
        family="Flux",
        shapes={QKV: (3 * H, H), LINEAR1: (7 * H, H), FINAL: (2 * H, H), PROJ: (H, H)},
        diffusers_names={PROJ: "transformer_blocks.0.attn.to_out.0"},
        diffusers_splits={
            QKV: blocks(["to_q", "to_k", "to_v"], "transformer_blocks.0.attn", [H, H, H]),
            LINEAR1: blocks(["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "single_transformer_blocks.0",
                            [H, H, H, 4 * H]),
            FINAL: (DiffusersPart("norm_out.linear", 0, 2 * H, swap_halves=True),),
        },
        kohya_names={"lora_unet_" + m.replace(".", "_"): m for m in (QKV, LINEAR1, FINAL, PROJ)},
        kohya_spelling="ldm",
        diffusers_component="transformer",
    )


def _flux_native(alpha_of=lambda module, r: 2.0 * r, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for module, shape in _flux_layout().shapes.items():
        r = 2 if module == PROJ else 3
        out[f"diffusion_model.{module}.lora_down.weight"] = torch.randn(r, shape[1], generator=g)
        out[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(shape[0], r, generator=g)
        out[f"diffusion_model.{module}.alpha"] = torch.tensor(alpha_of(module, r))
    return out


def test_split_rows_then_join_rows_is_exact_and_the_blocks_hold_the_rows():
    g = torch.Generator().manual_seed(0)
    w = LayerWeights(torch.randn(3, 5, generator=g), torch.randn(12, 3, generator=g), 3.0)
    blocks = [(0, 4, False), (4, 4, False), (8, 4, True)]
    parts = split_rows(w, blocks)
    delta = w.up @ w.down
    for (start, rows, swapped), p in zip(blocks, parts):
        assert torch.equal(p.down, w.down) and p.alpha == 3.0  # the same A for every block
        want = delta[start:start + rows]
        torch.testing.assert_close(p.up @ p.down, torch.cat(want.chunk(2)[::-1]) if swapped else want)
    joined = join_rows([RowBlock(s, r, sw, p) for (s, r, sw), p in zip(blocks, parts)], 12)
    assert joined.rank == 3 and torch.equal(joined.down, w.down) and torch.equal(joined.up, w.up) and joined.alpha == 3.0


def test_split_rows_folds_the_scale_into_up_for_readers_without_alpha():
    w = LayerWeights(torch.ones(2, 3), torch.ones(4, 2), 8.0)  # scale 4
    parts = split_rows(w, [(0, 2, False), (2, 2, False)], fold_scale=True)
    assert all(p.alpha == 2.0 and torch.equal(p.up, torch.full((2, 2), 4.0)) for p in parts)


def test_join_rows_concatenates_ranks_for_separate_downs_missing_blocks_and_scales():
    """q with rank 2 (scale 1), v with rank 1 (scale 3), no k: ΔW's q rows, zero k rows, v rows."""
    g = torch.Generator().manual_seed(1)
    q = LayerWeights(torch.randn(2, 5, generator=g), torch.randn(4, 2, generator=g), 2.0)
    v = LayerWeights(torch.randn(1, 5, generator=g), torch.randn(4, 1, generator=g), 3.0)
    joined = join_rows([RowBlock(8, 4, False, v), RowBlock(0, 4, False, q)], 12)
    assert joined.down.shape == (3, 5) and joined.up.shape == (12, 3) and joined.alpha == 3.0  # scales folded, alpha = Σr
    delta = joined.alpha / joined.rank * joined.up @ joined.down
    torch.testing.assert_close(delta[:4], q.up @ q.down)
    assert torch.count_nonzero(delta[4:8]) == 0
    torch.testing.assert_close(delta[8:], 3.0 * v.up @ v.down)
    same = join_rows([RowBlock(0, 4, False, q), RowBlock(4, 4, False, LayerWeights(v.down, v.up, 1.0))], 12)
    assert same.alpha == 3.0 and same.rank == 3  # one scale (1) for both: kept as alpha = scale · Σr


def test_flux_diffusers_export_splits_fused_layers_with_the_transformer_prefix():
    layout = _flux_layout()
    native = _flux_native()
    exported = export(native, layout, "diffusers")
    names = {k.rsplit(".lora_", 1)[0] for k in exported}
    assert names == {"transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn.to_k",
                     "transformer.transformer_blocks.0.attn.to_v", "transformer.transformer_blocks.0.attn.to_out.0",
                     "transformer.single_transformer_blocks.0.attn.to_q", "transformer.single_transformer_blocks.0.attn.to_k",
                     "transformer.single_transformer_blocks.0.attn.to_v", "transformer.single_transformer_blocks.0.proj_mlp",
                     "transformer.norm_out.linear"}
    up = native[f"diffusion_model.{LINEAR1}.lora_up.weight"]
    assert torch.equal(exported["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"], 2.0 * up[3 * H:])
    final = native[f"diffusion_model.{FINAL}.lora_up.weight"]
    assert torch.equal(exported["transformer.norm_out.linear.lora_B.weight"], 2.0 * torch.cat([final[H:], final[:H]]))
    config = json.loads(exported.raw_metadata["lora_adapter_metadata"])
    assert config["transformer.r"] == 3 and config["transformer.lora_alpha"] == 3  # scale 1: the scale is in B
    assert config["transformer.rank_pattern"] == {"transformer_blocks.0.attn.to_out.0": 2}
    assert sorted(config["transformer.target_modules"]) == sorted(n.removeprefix("transformer.") for n in names)
    back = to_native(exported, layout)
    for module in layout.shapes:
        _assert_deltas(back, {module: _delta(native, module)})


def test_flux_diffusers_export_with_scale_one_comes_back_bit_for_bit():
    layout = _flux_layout()
    native = _flux_native(alpha_of=lambda module, r: float(r))
    back = to_native(export(native, layout, "diffusers"), layout)
    assert set(back) == set(native) and all(torch.equal(back[k], native[k]) for k in native)


def test_flux_kohya_export_keeps_fused_layers_and_writes_sd_scripts_flux_metadata():
    layout = _flux_layout()
    native = _flux_native()
    exported = export(native, layout, "kohya")
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in exported
    assert "lora_unet_single_blocks_0_linear1.alpha" in exported
    assert exported.raw_metadata["ss_network_module"] == "networks.lora_flux"
    assert exported.raw_metadata["ss_base_model_version"] == "flux1"
    assert exported.raw_metadata["modelspec.architecture"] == "flux-1-dev/lora"
    back = to_native(exported, layout)
    assert all(torch.equal(back[k], native[k]) for k in native)


def test_a_transformer_prefixed_peft_config_is_read():
    """diffusers' Flux/SD3 pipelines write the LoraConfig with `transformer.`-prefixed keys."""
    layout = _flux_layout()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, H, generator=g), torch.randn(H, 2, generator=g)
    lora = LoraWeights({"transformer.transformer_blocks.0.attn.to_k.lora_A.weight": a,
                        "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": b},
                       {"lora_adapter_metadata": {"transformer.r": 2, "transformer.lora_alpha": 6}})
    native = to_native(lora, layout)
    delta = _delta(native, QKV)
    assert torch.count_nonzero(delta[:H]) == 0 and torch.count_nonzero(delta[2 * H:]) == 0
    torch.testing.assert_close(delta[H:2 * H], 3.0 * b @ a)


@pytest.mark.parametrize("names, kind", [
    (["transformer.transformer_blocks.0.attn.to_q", "transformer.x_embedder"], "flux"),
    (["transformer.time_text_embed.guidance_embedder.linear_1"], "flux"),
    (["x_embedder.proj", "final_layer.linear"], None),  # no block: nothing to tell
    (["transformer.pos_embed.proj"], "sd3"),
    (["transformer.transformer_blocks.0.attn.to_q", "transformer.transformer_blocks.0.attn2.to_q"], "sd3"),
    (["transformer.transformer_blocks.0.attn.add_q_proj", "transformer.transformer_blocks.0.attn.to_add_out",
      "transformer.transformer_blocks.1.attn.add_q_proj"], "sd3"),  # the last block's text stream is pre-only
    (["transformer.transformer_blocks.0.attn.add_q_proj", "transformer.transformer_blocks.1.attn.add_q_proj",
      "transformer.transformer_blocks.1.attn.to_add_out"], "dit"),
    (["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_q"], "dit"),  # PixArt-style, not SD3.5
])
def test_transformer_architecture_signs(names, kind):
    assert guess(names).kind == kind


def test_a_bare_transformer_fits_either_family_but_flux_and_sd3_differ():
    from driftless.lora.formats.architecture import Architecture

    assert not Architecture("dit").differs_from(Architecture("flux"))
    assert not Architecture("sd3").differs_from(Architecture("dit"))
    assert Architecture("sd3").differs_from(Architecture("flux"))
    assert Architecture("flux").differs_from(Architecture("sdxl-unet"))
