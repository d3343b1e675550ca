"""Driftless Load Images' file work (trainers/photos.py): names and patterns inside one folder, read as LoadImage
reads a file, brought to one size."""

import numpy as np
import pytest
import torch
from PIL import Image

from driftless.trainers.photos import find_photos, load_photos


def _save(path, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # a corner mark, to see crops and orientation
    Image.fromarray(pixels).save(path)
    return path


def test_lines_in_order_each_pattern_sorted_and_no_file_twice(tmp_path):
    for name in ("b_2.png", "b_1.png", "a.jpg", "notes.txt", "sub/c.webp"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            _save(tmp_path / name, (8, 8), 10)
    found = find_photos(tmp_path, "b_*.png\n  a.jpg  \n\nb_1.png\nsub/*")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["b_1.png", "b_2.png", "a.jpg", "sub/c.webp"]
    assert [p.name for p in find_photos(tmp_path, "*")] == ["a.jpg", "b_1.png", "b_2.png"]  # not notes.txt


@pytest.mark.parametrize("line, message", [
    ("../outside.png", "without '..'"),
    ("/etc/passwd", "without '..'"),
    ("missing_*.png", "no image in .* matches 'missing_\\*.png': put the photos there"),
    ("", "no photos named"),
])
def test_what_cannot_be_read_is_refused_saying_why(tmp_path, line, message):
    _save(tmp_path / "in" / "a.png", (8, 8), 10)
    _save(tmp_path / "outside.png", (8, 8), 10)
    with pytest.raises(ValueError, match=message):
        find_photos(tmp_path / "in", line)


def test_a_link_out_of_the_folder_is_not_followed(tmp_path):
    _save(tmp_path / "secret.png", (8, 8), 10)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="no image"):
        find_photos(tmp_path / "in", "link.png")


def test_same_size_photos_are_read_exactly_as_load_image_reads_them(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", (12, 8), 40 * i) for i in (1, 2)]
    batch = load_photos(paths)
    assert batch.shape == (2, 8, 12, 3) and batch.dtype == torch.float32
    for image, path in zip(batch, paths):
        expected = torch.from_numpy(np.array(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)
        assert torch.equal(image, expected)


def test_sizes_are_brought_to_the_first_photo_or_to_a_square(tmp_path):
    first = _save(tmp_path / "1.png", (16, 16), 100)
    wide = _save(tmp_path / "2.png", (64, 32), 200)  # centre-cropped to 32 x 32, then scaled to 16 x 16
    batch = load_photos([first, wide])
    assert batch.shape == (2, 16, 16, 3)
    assert torch.allclose(batch[1], torch.full((16, 16, 3), 200 / 255), atol=1e-6)  # the corner mark was cropped off
    square = load_photos([wide, first], size=8)
    assert square.shape == (2, 8, 8, 3)
    assert 0.0 <= float(square.min()) and float(square.max()) <= 1.0


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.fromarray(np.zeros((8, 16, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    image.save(path, exif=exif)
    assert load_photos([path]).shape == (1, 16, 8, 3)
