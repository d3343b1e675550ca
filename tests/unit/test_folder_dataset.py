"""Folder datasets (trainers/folder_dataset.py), aspect-ratio buckets (trainers/buckets.py), the training data's
sizes and repeats (trainers/data.py) and the masked loss (trainers/objective.py), without ComfyUI."""

import numpy as np
import pytest
import torch
from PIL import Image

from driftless.trainers.buckets import BucketStream, bucket_sizes, group_by_shape, nearest_bucket
from driftless.trainers.data import IndexStream, TrainingData
from driftless.trainers.folder_dataset import (fill_template, latent_weights, load_folder, place_trigger,
                                              resolve_folder, scan_folder)
from driftless.trainers.objective import denoising_loss
from driftless.trainers.photos import load_photos


def _photo(path, width, height, value=100, caption=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    pixels[:, : width // 2] = 255 - value  # a left half of another shade, to see crops
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


# ---- buckets -------------------------------------------------------------------------------------------------------

def test_bucket_sizes_by_hand():
    # 64 px budget (4096 px²) on a 16 px grid, up to 2:1: width 32 -> 128 is 4:1 (out); 48 -> 80 (3840 px²); 64 -> 64;
    # 80 -> 48; 96 -> 32 is 3:1 (out)
    assert bucket_sizes(64, 16) == [(48, 80), (64, 64), (80, 48)]
    # 512 px on kohya's 64 px grid: 384x640 ... 640x384
    assert bucket_sizes(512, 64) == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    assert all(w * h <= 512 * 512 for w, h in bucket_sizes(512, 64))
    with pytest.raises(ValueError, match="at least the bucket step"):
        bucket_sizes(32, 64)


def test_each_photo_goes_to_the_bucket_of_its_aspect_ratio():
    sizes = bucket_sizes(512, 64)
    assert nearest_bucket(1000, 1000, sizes) == (512, 512)
    assert nearest_bucket(1920, 1080, sizes) == (640, 384)  # 16:9 (1.78) -> 5:3 (1.67)
    assert nearest_bucket(1080, 1920, sizes) == (384, 640)
    assert nearest_bucket(1200, 900, sizes) == (576, 448)  # 4:3 (1.33) -> 1.29
    assert nearest_bucket(3000, 500, sizes) == (640, 384)  # 6:1: the widest bucket
    assert group_by_shape([(4, 8, 8), (4, 6, 10), (4, 8, 8)]) == [[0, 2], [1]]


def test_bucket_stream_batches_within_buckets_counts_repeats_and_resumes_exactly():
    buckets, repeats = [[0, 2, 4], [1, 3]], [1, 1, 2, 1, 3]  # bucket 0 holds 0, 2, 2, 4, 4, 4; bucket 1: 1, 3
    g = torch.Generator().manual_seed(0)
    stream = BucketStream(buckets, 4, g, repeats)
    epoch = [stream.take(4).tolist() for _ in range(3)]  # 6 -> batches of 4 and 2; 2 -> one batch of 2
    assert sorted(len(b) for b in epoch) == [2, 2, 4]
    assert all(set(b) <= {0, 2, 4} or set(b) <= {1, 3} for b in epoch)
    assert sorted(i for b in epoch for i in b) == [0, 1, 2, 2, 3, 4, 4, 4]
    stream.take(4)  # into the second epoch
    saved, rng = stream.state(), g.get_state()
    expected = [stream.take(4).tolist() for _ in range(5)]
    resumed = BucketStream(buckets, 4, torch.Generator().manual_seed(99), repeats)
    resumed.generator.set_state(rng)
    resumed.load_state(saved)
    assert [resumed.take(4).tolist() for _ in range(5)] == expected
    again = BucketStream(buckets, 4, torch.Generator().manual_seed(0), repeats)
    assert [again.take(4).tolist() for _ in range(3)] == epoch  # deterministic from the seed
    with pytest.raises(ValueError, match="photos of one size"):
        resumed.load_state(IndexStream(8, torch.Generator()).state())
    with pytest.raises(ValueError, match="in aspect-ratio buckets"):
        IndexStream(8, torch.Generator()).load_state(saved)
    with pytest.raises(ValueError, match="for 8 examples"):
        BucketStream(buckets, 4, torch.Generator()).load_state(saved)
    with pytest.raises(ValueError, match="does not fit this dataset's buckets"):
        BucketStream([[0, 1, 2], [3, 4]], 4, torch.Generator(), repeats).load_state(saved)


def test_training_data_of_one_size_stays_one_batch_and_mixed_sizes_stay_apart():
    cond = [[torch.zeros(1, 2, 3), {}]]
    same = TrainingData([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)], cond * 2, cond, ["a", "b"], repeats=[1, 1])
    assert isinstance(same.latents, torch.Tensor) and same.latents.shape == (2, 4, 8, 8) and same.repeats is None
    assert isinstance(same.stream(1, torch.Generator()), IndexStream)  # as before: the same draws, the same state
    mixed = TrainingData([torch.zeros(4, 8, 8), torch.zeros(4, 6, 10), torch.zeros(4, 6, 10)], cond * 3, cond,
                         loss_weights=[None, torch.ones(1, 6, 10), None])
    assert len(mixed) == 3 and mixed.channels == 4 and mixed.preview_shape == (4, 6, 10)
    assert isinstance(mixed.stream(2, torch.Generator()), BucketStream)
    with pytest.raises(ValueError, match="needs photos of one size, this training data has 2 latent sizes"):
        mixed.same_size_latents("the Fisher of a concept")
    with pytest.raises(ValueError, match="loss weight map of example 0"):
        TrainingData([torch.zeros(4, 8, 8)], cond, cond, loss_weights=[torch.ones(1, 6, 10)])
    with pytest.raises(ValueError, match="different channel counts"):
        TrainingData([torch.zeros(4, 8, 8), torch.zeros(16, 8, 6)], cond * 2, cond)


# ---- masked loss ---------------------------------------------------------------------------------------------------

def test_masked_loss_by_hand_on_a_small_latent():
    """2 channels, 2x2 latent: errors e² = [[1, 4], [9, 16]] in channel 0 and zero in channel 1, weights
    [[1, 1], [0.25, 0.25]]: Σ w·e² = 1 + 4 + 2.25 + 4 = 11.25, C·Σ w = 2 · 2.5 = 5, so 2.25 (plain mean: 30/8)."""
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.zeros_like(prediction)
    weights = torch.tensor([[[[1.0, 1.0], [0.25, 0.25]]]])
    assert denoising_loss(prediction, target).item() == pytest.approx(30 / 8)
    assert denoising_loss(prediction, target, pixel_weight=weights).item() == pytest.approx(2.25)
    assert denoising_loss(prediction, target, torch.tensor([2.0]), weights).item() == pytest.approx(4.5)
    ones = torch.ones(1, 1, 2, 2)
    assert torch.equal(denoising_loss(prediction, target, pixel_weight=ones), denoising_loss(prediction, target))


def test_a_pixel_mask_becomes_the_latents_weight_map():
    mask = torch.zeros(16, 16)
    mask[:8, :8] = 1.0  # the subject fills the top-left latent pixel of a 2x2 latent
    mask[8:, 8:12] = 1.0  # and half of the bottom-right one
    w = latent_weights(mask, (2, 2), 0.1)
    assert w.shape == (1, 2, 2)
    assert torch.allclose(w, torch.tensor([[[1.0, 0.1], [0.1, 0.5]]]))
    assert torch.equal(latent_weights(mask, (2, 2), 1.0), torch.ones(1, 2, 2))


# ---- folders -------------------------------------------------------------------------------------------------------

def test_captions_templates_and_the_trigger_beside_the_class_noun():
    assert place_trigger("a photo of a dog on a beach", "sks", "dog") == "a photo of a sks dog on a beach"
    assert place_trigger("A Dog sleeping", "sks", "dog") == "A sks Dog sleeping"
    assert place_trigger("hotdog stand and a dog", "sks", "dog") == "hotdog stand and a sks dog"  # whole words
    assert place_trigger("sks dog in snow", "sks", "dog") == "sks dog in snow"  # already there
    assert place_trigger("on a beach", "sks", "dog") == "sks dog, on a beach"
    assert place_trigger("on a beach", "", "dog") == "on a beach"
    assert fill_template("a photo of {trigger} {class}", "sks", "dog") == "a photo of sks dog"
    assert fill_template("a photo of {trigger}  {class}", "", "dog") == "a photo of dog"
    with pytest.raises(ValueError, match="only {trigger} and {class}"):
        fill_template("a photo of {name}", "sks", "dog")


def test_a_folder_with_captions_repeats_and_masks(tmp_path):
    root = tmp_path / "input"
    _photo(root / "subject" / "b.png", 32, 32, caption="a dog on grass\n")
    _photo(root / "subject" / "a.jpg", 48, 32)  # no caption: the template
    _photo(root / "subject" / "a_mask.png", 48, 32, 255)
    _photo(root / "subject" / "10_closeups" / "c.webp", 32, 48, caption="sks dog, close")
    _photo(root / "subject" / "more" / "d.png", 32, 32, caption="  ")  # empty: the template
    (root / "subject" / "notes.md").write_text("not a photo")
    (root / "subject" / "._b.png").write_bytes(b"macOS metadata, not a photo")
    _photo(root / "subject" / ".thumbnails" / "b.png", 8, 8)
    photos = scan_folder(root, "subject", trigger="sks", class_noun="dog", template="a photo of {trigger} {class}",
                         repeats=2)
    names = [p.path.relative_to(root / "subject").as_posix() for p in photos]
    assert names == ["10_closeups/c.webp", "a.jpg", "b.png", "more/d.png"]
    assert [p.caption for p in photos] == ["sks dog, close", "a photo of sks dog", "a sks dog on grass",
                                          "a photo of sks dog"]
    assert [p.repeats for p in photos] == [10, 2, 2, 2]
    assert [p.mask.name if p.mask else None for p in photos] == [None, "a_mask.png", None, None]
    assert [p.caption_file.name if p.caption_file else None for p in photos] == ["c.txt", None, "b.txt", None]
    assert scan_folder(root, "subject/10_closeups")[0].repeats == 10  # the folder given may carry the count itself


@pytest.mark.parametrize("folder, message", [
    ("../outside", "without '..'"),
    ("/etc", "without '..'"),
    ("", "name a folder inside the input folder"),
    ("missing", "no folder 'missing' in the input folder"),
    ("empty", "no photos in .*empty or its sub-folders"),
])
def test_folders_that_cannot_be_used_are_refused_saying_why(tmp_path, folder, message):
    (tmp_path / "input" / "empty").mkdir(parents=True)
    (tmp_path / "input" / "empty" / "caption.txt").write_text("a caption without its photo")
    with pytest.raises(ValueError, match=message):
        scan_folder(tmp_path / "input", folder)


def test_an_unreadable_photo_or_a_mask_of_another_size_is_refused_naming_the_file(tmp_path):
    _photo(tmp_path / "good.png", 16, 16)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    photos = scan_folder(tmp_path.parent, tmp_path.name, trigger="sks", class_noun="dog")
    with pytest.raises(ValueError, match=r"broken\.png cannot be read as an image .*replace or remove it"):
        load_folder(photos, 64, step=16)
    with pytest.raises(ValueError, match=r"broken\.png cannot be read as an image"):  # Load Images names it too
        load_photos([tmp_path / "good.png", tmp_path / "broken.png"])
    (tmp_path / "broken.png").unlink()
    _photo(tmp_path / "good_mask.png", 8, 8)
    photos = scan_folder(tmp_path.parent, tmp_path.name, trigger="sks", class_noun="dog")
    with pytest.raises(ValueError, match=r"good_mask\.png is 8x8 but good\.png is 16x16"):
        load_folder(photos, 64, step=16)


def test_photos_load_at_their_bucket_and_masks_are_cropped_with_them(tmp_path):
    root = tmp_path / "input"
    _photo(root / "s" / "square.png", 40, 40)
    _photo(root / "s" / "wide.png", 200, 100)  # 2:1 -> the 80x48 bucket: scaled to 96x48, 8 columns cut each side
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[:, 100:] = 255  # the right half is the subject
    Image.fromarray(mask).save(root / "s" / "wide_mask.png")
    photos = scan_folder(root, "s", trigger="sks", class_noun="dog")
    square, wide = load_folder(photos, 64, buckets=True, step=16)
    assert square.image.shape == (64, 64, 3) and square.mask is None
    assert wide.image.shape == (48, 80, 3) and wide.mask.shape == (48, 80)
    assert torch.all(wide.mask[:, :39] < 0.01) and torch.all(wide.mask[:, 41:] > 0.99)  # still the right half
    assert torch.allclose(wide.image[:, :39], torch.full((48, 39, 3), 155 / 255), atol=1e-2)
    squares = load_folder(photos, 32, buckets=False)
    assert [item.image.shape for item in squares] == [(32, 32, 3), (32, 32, 3)]
    assert resolve_folder(root, "s") == (root / "s").resolve()
