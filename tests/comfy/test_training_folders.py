"""Folder datasets, aspect-ratio buckets and masked loss on the tiny models: exact resume with buckets, repeats, masks
and prior preservation; the folder node in real graphs (captions, repeats, masks, validation images) and its
refusals naming the file."""

import numpy as np
import pytest
import torch
from PIL import Image

from driftless.trainers.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.3, targets="all linear+conv")


def _photo(name: str, width: int, height: int) -> np.ndarray:
    """A real photograph from scikit-image's bundled data, scaled to width x height."""
    from skimage import data

    return np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize((width, height), Image.BICUBIC))


def _mixed_data(built, architecture, masked=True):
    """Four photos in two buckets (64x64 and 80x48 px), the first twice as often, the wide ones masked on their right
    half (unmasked weight 0.2)."""
    from driftless.trainers.data import TrainingData

    model, clip, vae, _ = built(architecture)
    sizes = [(64, 64), (80, 48), (64, 64), (80, 48)]
    names = ["chelsea", "coffee", "astronaut", "rocket"]
    latents = [vae.encode(torch.from_numpy(_photo(n, w, h).astype(np.float32) / 255)[None])[0]
               for n, (w, h) in zip(names, sizes)]
    weights = None
    if masked:
        wide = torch.full((1, 6, 10), 0.2)
        wide[..., 5:] = 1.0
        weights = [None, wide, None, wide.clone()]
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    captions = ["a photo of sks cat", "a photo of sks cup", "a photo of sks cat", "a photo of sks cup"]
    data = TrainingData(latents, [encode(c) for c in captions], encode(""), captions, loss_weights=weights,
                        repeats=[2, 1, 1, 1])
    return model, clip, vae, data


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny", "flux-dev-tiny"])
def test_buckets_repeats_and_masks_resume_exactly(built, checkpoints, architecture):
    """4 steps + resume + 4 steps equals 8 steps straight with mixed sizes (batches within buckets, last batch of a
    bucket smaller), repeats, masked loss and prior preservation at a third size: the bucket order is resumed."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation
    from driftless.trainers.state import ResumeState

    model, clip, _, data = _mixed_data(built, architecture)
    channels = data.channels
    class_latents = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    class_cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    prior = lambda: [PriorPreservation(class_latents, class_cond, "a photo of a cat", weight=0.5)]  # noqa: E731
    config = TrainConfig(steps=8, checkpoint_every=4, batch_size=2, **FAST)
    straight = train_lora(model, data, config, prior())
    train_lora(model, data, TrainConfig(**{**config.as_dict(), "steps": 4}), prior(), on_checkpoint=checkpoints.save)
    state = ResumeState(checkpoints.paths[0])
    assert state.data_state()["batch_sizes"].sum() == 5  # an epoch: 2 + 1 + 1 + 1 examples (repeats counted)
    resumed = train_lora(model, data, config, prior(), resume=state)
    a, b = straight.adapter.lora_state_dict(), resumed.adapter.lora_state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    assert all(np.isfinite(straight.losses))


def test_bucketed_batches_hold_one_size_and_the_mask_weighs_the_loss(built):
    """Every micro-batch comes from one bucket; a mask of ones is the plain loss bit for bit, a real mask another."""
    from driftless.trainers.data import TrainingData
    from driftless.trainers.loop import TrainingRun, train_lora

    model, _, _, data = _mixed_data(built, "sd15-tiny")
    run = TrainingRun(model, data, TrainConfig(steps=6, batch_size=2, **FAST))
    shapes = set()
    for _ in range(6):
        index = run.stream.take(2)
        shapes.add(len({data.shapes[int(i)] for i in index}))
    assert shapes == {1}
    plain = TrainingData(data.latents, data.conditionings, data.null, data.captions, repeats=data.repeats)
    ones = TrainingData(data.latents, data.conditionings, data.null, data.captions, repeats=data.repeats,
                        loss_weights=[torch.ones(1, *s[1:]) for s in data.shapes])
    config = TrainConfig(steps=4, batch_size=2, **FAST)
    unmasked, all_ones, masked = (train_lora(model, d, config).losses for d in (plain, ones, data))
    assert all_ones == unmasked
    assert masked != unmasked


def test_a_mask_moves_with_the_latent_through_apt_augmentation(built):
    """APT's adaptive augmentation zooms and rotates the latent; the loss weight map goes through the same draw."""
    from types import SimpleNamespace

    from driftless.trainers.loop import _augment
    from driftless.trainers.regularizers.apt import APT

    apt = APT(p_max=1.0, adaptive_adjustment=True)
    apt.indicator.gamma = lambda bins: torch.ones(bins.shape[0])  # always augment
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    x0[:, :1] = mask
    run = SimpleNamespace(regularizers=[apt], generator=torch.Generator().manual_seed(2))
    moved, weights = _augment(run, torch.cat([x0, mask], 1), torch.rand(3)).split([4, 1], 1)
    assert not torch.equal(weights, mask)
    assert torch.equal(weights, moved[:, :1])


# ---- the folder node in graphs ---------------------------------------------------------------------------------------

def _folder(base, name="sks_folder"):
    """input/<name>: three photos of mixed sizes (one captioned, one without caption, one with a mask) and a
    3_closeups folder with a fourth photo."""
    folder = base / "input" / name
    (folder / "3_closeups").mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo("chelsea", 64, 64)).save(folder / "cat.png")
    (folder / "cat.txt").write_text("a cat on a sofa")
    Image.fromarray(_photo("chelsea", 96, 48)).save(folder / "wide.png")
    mask = np.zeros((48, 96), dtype=np.uint8)
    mask[:, 48:] = 255
    Image.fromarray(mask).save(folder / "wide_mask.png")
    Image.fromarray(_photo("chelsea", 48, 80)).save(folder / "tall.jpg")
    Image.fromarray(_photo("chelsea", 60, 60)).save(folder / "3_closeups" / "face.png")
    (folder / "3_closeups" / "face.txt").write_text("close-up of sks cat")
    return folder


def _graph(folder="sks_folder", data=None, **train):
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0)
    settings = dict(trigger_word="sks", class_noun="cat", caption_template="a photo of {trigger} {class}", repeats=1,
                    resolution=64, aspect_buckets=True, bucket_step=16, unmasked_weight=0.1)
    data = g.node("DriftlessFolderData", id="data", clip=model.out(1), vae=model.out(2), folder=folder,
                  **{**settings, **(data or {})})
    knobs = dict(steps=4, learning_rate=1e-3, rank=4, alpha=4.0, target_layers="attention", batch_size=2,
                 gradient_accumulation=1, optimizer="AdamW", lr_schedule="constant", warmup_steps=0,
                 training_dtype="fp32", gradient_checkpointing=False, seed=0, null_prompt_dropout=0.1,
                 min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0, run_name="folder_run",
                 checkpoint_every=0)
    t = g.node("DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0), **{**knobs, **train})
    g.node("DriftlessSaveLoRA", id="save", lora=t.out(1), filename="graph/folder", overwrite=True)
    g.node("SaveImage", id="val", images=t.out(4), filename_prefix="folder_val")
    return g.finalize()


def test_a_folder_trains_in_a_graph_with_captions_repeats_masks_and_validation(run_prompt, comfy_host):
    from driftless.lora.files import load_lora
    from driftless.nodes.training_data import FolderData

    from driftless.tinymodels.build import build_tiny_model

    _folder(comfy_host.base_directory)
    _, clip, vae = build_tiny_model("sd15-tiny", 0)
    data, text = FolderData.execute(clip, vae, "sks_folder", "sks", "cat", "a photo of {trigger} {class}", 1, 64,
                                    True, 16, 0.1).result
    assert text.splitlines() == [
        "sks_folder/3_closeups/face.png: 64x64, x3: close-up of sks cat",
        "sks_folder/cat.png: 64x64, x1: a sks cat on a sofa",
        "sks_folder/tall.jpg: 48x80, x1: a photo of sks cat",
        "sks_folder/wide.png: 80x48, x1, masked: a photo of sks cat",
    ]
    assert data.shapes == [(4, 8, 8), (4, 8, 8), (4, 10, 6), (4, 6, 10)] and data.repeats == [3, 1, 1, 1]
    weights = data.loss_weights[3]
    assert torch.allclose(weights[..., :5], torch.full((1, 6, 5), 0.1)) and torch.all(weights[..., 5:] == 1)

    prompt = _graph(validation_every=4, validation_prompt="a photo of sks cat", validation_seed=0,
                    validation_steps=2, validation_cfg=3.0, clip=["model", 1], vae=["model", 2])
    result = run_prompt(prompt)
    assert result.success, result.error
    saved = load_lora(comfy_host.base_directory / "models" / "loras" / "graph" / "folder.safetensors")
    assert saved.metadata["prompts"] == ["a photo of sks cat", "a sks cat on a sofa", "close-up of sks cat"]
    image = result.outputs["val"]["images"][0]
    pixels = np.asarray(Image.open(comfy_host.base_directory / "output" / image["subfolder"] / image["filename"]))
    assert pixels.shape == (64, 64, 3)  # the most common bucket's size


def test_folder_refusals_name_the_folder_or_the_file(run_prompt, comfy_host):
    from driftless.headless import runner

    base = comfy_host.base_directory
    (base / "input" / "nothing_here").mkdir(parents=True, exist_ok=True)
    prompt = _graph(folder="nothing_here")
    text = runner.format_validation_errors(run_prompt(prompt, expect_valid=False), prompt)
    assert "no photos in" in text and "nothing_here" in text
    _folder(base)
    prompt = _graph(data={"resolution": 64, "bucket_step": 128})
    text = runner.format_validation_errors(run_prompt(prompt, expect_valid=False), prompt)
    assert "resolution (64 px) must be at least the bucket step (128 px)" in text

    broken = _folder(base, "broken_folder")
    (broken / "zz_broken.png").write_bytes(b"\x89PNG not really")
    result = run_prompt(_graph(folder="broken_folder"))
    assert not result.success and "zz_broken.png cannot be read as an image" in result.error["exception_message"]

    long = _folder(base, "long_caption")
    (long / "cat.txt").write_text("a cat " + "with a very long and winding tail " * 12)
    result = run_prompt(_graph(folder="long_caption"))
    message = result.error["exception_message"]
    assert not result.success and "cat.txt: the caption is longer than the text encoder's window" in message


def test_training_data_with_a_mask_input(run_prompt, comfy_host):
    """Driftless Training Data takes a MASK for its image batch (one for all photos, or one per photo); it refuses a
    caption over the text encoder's window too."""
    from comfy_execution.graph_utils import GraphBuilder

    from driftless.nodes.training_data import TrainingData as Node
    from driftless.tinymodels.build import build_tiny_model

    _, clip, vae = build_tiny_model("sd15-tiny", 0)
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    data = Node.execute(clip, "a photo of sks cat", images=images, vae=vae, mask=mask, unmasked_weight=0.25).result[0]
    expected = torch.full((1, 8, 8), 0.25)
    expected[..., :4] = 1.0
    assert all(torch.equal(w, expected) for w in data.loss_weights)
    with pytest.raises(ValueError, match="3 masks for 2 photos"):
        Node.execute(clip, "a photo of sks cat", images=images, vae=vae, mask=torch.ones(3, 64, 64))
    with pytest.raises(ValueError, match="mask is 32x32 but the photos are 64x64"):
        Node.execute(clip, "a photo of sks cat", images=images, vae=vae, mask=torch.ones(1, 32, 32))
    long = "a photo of sks cat " + "with a very long and winding tail " * 12
    with pytest.raises(ValueError, match="the caption starting 'a photo of sks cat with a very long and ': the "
                                         "caption is longer than the text encoder's window"):
        Node.execute(clip, f"a photo of sks cat\n{long}", images=images, vae=vae)
    with pytest.raises(ValueError, match="mask of photo 1 is empty and the unmasked weight is 0"):
        Node.execute(clip, "a photo of sks cat", images=images, vae=vae, mask=torch.zeros(1, 64, 64), unmasked_weight=0)

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=2, color=0x3366CC)
    solid = g.node("SolidMask", id="mask", value=1.0, width=64, height=64)
    node = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks vase",
                  images=image.out(0), vae=model.out(2), mask=solid.out(0), unmasked_weight=0.1)
    train = g.node("DriftlessTrainLoRA", id="train", model=model.out(0), training_data=node.out(0), steps=2,
                   learning_rate=1e-3, rank=4, alpha=4.0, target_layers="attention", batch_size=1,
                   gradient_accumulation=1, optimizer="AdamW", lr_schedule="constant", warmup_steps=0,
                   training_dtype="fp32", gradient_checkpointing=False, seed=0, null_prompt_dropout=0.1,
                   min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0, run_name="masked_run",
                   checkpoint_every=0)
    g.node("SaveImage", id="plot", images=train.out(3), filename_prefix="masked_plot")
    result = run_prompt(g.finalize())
    assert result.success, result.error


def step_overhead(repeats: int = 7, steps: int = 10) -> None:
    """Paired CPU time per step (1 thread, sd15-tiny, batch 2): two 64 px photos as one batch, against the same photos
    through the bucket stream (repeats 2 and 2, so every batch still holds 2) with masked loss. Prints the medians
    and the ratio's spread over the repeats after the first (a warm-up)."""
    import statistics
    import time

    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData
    from driftless.trainers.loop import TrainingRun

    model, clip, vae = build_tiny_model("sd15-tiny", 0)
    encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    latents = vae.encode(torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0)))
    cond = encode("a photo of sks cat")
    mask = torch.full((1, 8, 8), 0.1)
    mask[..., 4:] = 1.0
    data = {"one batch": TrainingData(latents, [cond, cond], encode(""), ["a photo of sks cat"] * 2),
            "buckets + mask": TrainingData(latents, [cond, cond], encode(""), ["a photo of sks cat"] * 2,
                                           loss_weights=[mask, mask.clone()], repeats=[2, 2])}
    config = TrainConfig(steps=10**6, rank=4, alpha=4.0, batch_size=2, targets="all linear+conv")
    runs = {name: TrainingRun(model, d, config) for name, d in data.items()}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run.activate()
            run.step()
            start = time.process_time()
            for _ in range(steps):
                run.step()
            times[name].append((time.process_time() - start) / steps)
    for name, values in times.items():
        print(f"{name}: {statistics.median(values[1:]):.4f} s/step")
    ratios = [b / a for a, b in zip(*(values[1:] for values in times.values()))]
    print(f"ratio {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":  # ./driftless --host 0.3.75 python tests/comfy/test_training_folders.py
    import tempfile

    from driftless.headless import host

    host.boot(tempfile.mkdtemp(), cpu=True)
    torch.set_num_threads(1)
    step_overhead()
