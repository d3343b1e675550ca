"""A local copy of the DreamBooth dataset: its folder, the prompts file, the subjects and their photos.

`--dataset` may name the repository root (holding `dataset/`) or the `dataset/` folder itself. The prompts
file is parsed in the repository's own format (see `parse_prompts_file`); without it, the copy embedded in
protocol.py is used and the run says so.
"""

import hashlib
import pathlib
import re
from dataclasses import dataclass

import torch

from . import protocol


class DreamBenchError(ValueError):
    """An input a user can fix: the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Prompts:
    """What prompts_and_classes.txt holds."""

    classes: dict[str, str]  # subject -> class noun, in the file's order
    object_templates: tuple[str, ...]
    live_templates: tuple[str, ...]
    source: str  # the file, or where the embedded copy comes from


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    live: bool
    photos: tuple[pathlib.Path, ...]
    templates: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "live" if self.live else "object"

    def prompts(self, identifier: str, limit: int | None = None) -> list[str]:
        """The evaluation prompts: each template with {0} = identifier and {1} = class noun."""
        return [t.format(identifier, self.class_noun) for t in self.templates[:limit]]

    def photo_digest(self) -> list[list[str]]:
        """[file name, sha256 prefix] of each photo: what a resumed run checks its LoRA was trained on."""
        return [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()[:16]] for p in self.photos]


_QUOTED = re.compile(r"""^\s*(['"])(.*?)\1""")


def parse_prompts_file(text: str, source: str = protocol.PROMPTS_FILE) -> Prompts:
    """google/dreambooth's dataset/prompts_and_classes.txt:

        Classes / subject_name,class / backpack,backpack / ... / Prompts / Object Prompts /
        prompt_list = [ / 'a {0} {1} in the jungle'.format(unique_token, class_token), / ... / ] /
        Live Subject Prompts / prompt_list = [ ... ]

    Each prompt is the quoted string at the start of its line; anything after it is ignored.
    """
    classes, lists, section = {}, {"object": [], "live": []}, None
    for line in text.splitlines():
        stripped = line.strip()
        lowered = stripped.lower()
        if lowered.replace(" ", "") == "subject_name,class":
            section = "classes"
        elif lowered.startswith("object prompts"):
            section = "object"
        elif lowered.startswith("live subject prompts"):
            section = "live"
        elif section == "classes" and "," in stripped:
            name, noun = (part.strip() for part in stripped.split(",", 1))
            if name and noun:
                classes[name] = noun
        elif section == "classes" and stripped:
            section = None  # the class table ended
        elif section in lists and (match := _QUOTED.match(line)):
            lists[section].append(match.group(2))
    problems = []
    if not classes:
        problems.append("no 'subject_name,class' table")
    for kind, header in (("object", "Object Prompts"), ("live", "Live Subject Prompts")):
        if not lists[kind]:
            problems.append(f"no prompts under '{header}'")
        bad = [t for t in lists[kind] if "{0}" not in t or "{1}" not in t]
        if bad:
            problems.append(f"{kind} prompts without {{0}} (token) and {{1}} (class): {bad[:2]}")
    if problems:
        raise DreamBenchError(f"{source} is not in the format of google/dreambooth's {protocol.PROMPTS_FILE}: "
                              + "; ".join(problems))
    return Prompts(classes, tuple(lists["object"]), tuple(lists["live"]), source)


def embedded_prompts() -> Prompts:
    return Prompts(dict(protocol.CLASSES), protocol.OBJECT_PROMPTS, protocol.LIVE_PROMPTS,
                   f"the copy of google/dreambooth's {protocol.PROMPTS_FILE} in bench/dreambench/protocol.py")


def dataset_folder(path) -> pathlib.Path:
    """The folder holding the subject folders (and, normally, the prompts file)."""
    root = pathlib.Path(path).expanduser()
    hint = ("Clone github.com/google/dreambooth and pass its dataset/ folder (or the repository root): "
            f"<folder>/{protocol.PROMPTS_FILE} and <folder>/<subject>/*.jpg. Nothing is downloaded.")
    if not root.is_dir():
        raise DreamBenchError(f"dataset folder {root} does not exist. {hint}")
    for candidate in (root, root / "dataset"):
        if (candidate / protocol.PROMPTS_FILE).is_file():
            return candidate
    known = {name for name, _ in protocol.CLASSES}
    for candidate in (root, root / "dataset"):
        if candidate.is_dir() and any(p.is_dir() and p.name in known for p in candidate.iterdir()):
            return candidate
    raise DreamBenchError(f"{root} holds neither {protocol.PROMPTS_FILE} nor DreamBooth subject folders "
                          f"(backpack/, dog/, ...), nor a dataset/ folder with them. {hint}")


def load_prompts(folder: pathlib.Path) -> Prompts:
    path = folder / protocol.PROMPTS_FILE
    if path.is_file():
        return parse_prompts_file(path.read_text(encoding="utf-8"), str(path))
    return embedded_prompts()


def subjects(folder: pathlib.Path, prompts: Prompts, names: list[str] | None = None,
             live_classes=protocol.LIVE_CLASSES) -> list[Subject]:
    """The chosen subjects (default: every subject of the class table), each with its photos; every problem at once."""
    names = list(names or prompts.classes)
    unknown = [n for n in names if n not in prompts.classes]
    if unknown:
        raise DreamBenchError(f"unknown subject(s) {', '.join(unknown)}; {prompts.source} lists: "
                              + ", ".join(prompts.classes))
    out, problems = [], []
    for name in names:
        sub = folder / name
        photos = tuple(sorted(p for p in sub.iterdir() if p.suffix.lower() in protocol.PHOTO_SUFFIXES)) if sub.is_dir() else ()
        if not sub.is_dir():
            problems.append(f"{sub} is missing")
        elif not photos:
            problems.append(f"{sub} holds no photos ({', '.join(protocol.PHOTO_SUFFIXES)})")
        noun = prompts.classes[name]
        live = noun in live_classes
        out.append(Subject(name, noun, live, photos, prompts.live_templates if live else prompts.object_templates))
    if problems:
        raise DreamBenchError("subject photos: " + "; ".join(problems)
                              + " (each subject is a folder of its photos, as in google/dreambooth's dataset/)")
    return out


def load_photos(paths, resolution: int) -> torch.Tensor:
    """IMAGE [N, R, R, 3] in [0, 1]: each photo upright (EXIF orientation), centre-cropped to a square and resized
    to R x R, as DreamBooth training pipelines do (resize the short side, centre crop). The LoRA trains on these
    and the metrics compare against them."""
    import numpy as np
    from PIL import Image, ImageOps

    out = []
    for path in paths:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            img = img.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS)
            out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(out)
