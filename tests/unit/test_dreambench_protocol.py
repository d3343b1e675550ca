"""DreamBench protocol parts without ComfyUI: the prompts file format, subjects and photos, methods, the aggregate."""

import statistics

import numpy as np
import pytest
import torch
from driftless.bench.dreambench import dataset, methods, protocol, report
from driftless.bench.dreambench.dataset import DreamBenchError
from PIL import Image

# the head and tail of google/dreambooth's dataset/prompts_and_classes.txt, in its own format (two prompts per list)
EXCERPT = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
dog,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} in a purple wizard outfit'.format(unique_token, class_token)
]
"""


def prompts_file_text(classes, object_prompts, live_prompts) -> str:
    """A prompts_and_classes.txt in google/dreambooth's layout."""
    lines = ["Classes", "", "subject_name,class", *(f"{n},{c}" for n, c in classes), "", "Prompts", "",
             "Object Prompts", "", "prompt_list = ["]
    lines += [f"'{t}'.format(unique_token, class_token)," for t in object_prompts]
    lines += ["]", "", "Live Subject Prompts", "", "prompt_list = ["]
    lines += [f"'{t}'.format(unique_token, class_token)," for t in live_prompts] + ["]", ""]
    return "\n".join(lines)


def test_parses_the_repository_format():
    parsed = dataset.parse_prompts_file(EXCERPT)
    assert parsed.classes == {"backpack": "backpack", "bear_plushie": "stuffed animal", "dog": "dog"}
    assert parsed.object_templates == ("a {0} {1} in the jungle", "a cube shaped {0} {1}")
    assert parsed.live_templates == ("a {0} {1} wearing a red hat", "a {0} {1} in a purple wizard outfit")


def test_embedded_copy_is_the_standard_protocol_and_round_trips():
    assert len(protocol.CLASSES) == 30
    live = [n for n, c in protocol.CLASSES if c in protocol.LIVE_CLASSES]
    assert live == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]  # 9 live, 21 objects
    assert len(protocol.OBJECT_PROMPTS) == len(protocol.LIVE_PROMPTS) == protocol.PROMPTS_PER_SUBJECT == 25
    assert protocol.OBJECT_PROMPTS[:10] == protocol.LIVE_PROMPTS[:10] and protocol.OBJECT_PROMPTS[-5:] == protocol.LIVE_PROMPTS[-5:]
    assert len(set(protocol.OBJECT_PROMPTS) | set(protocol.LIVE_PROMPTS)) == 35
    text = prompts_file_text(protocol.CLASSES, protocol.OBJECT_PROMPTS, protocol.LIVE_PROMPTS)
    parsed, embedded = dataset.parse_prompts_file(text), dataset.embedded_prompts()
    assert (parsed.classes, parsed.object_templates, parsed.live_templates) == \
        (embedded.classes, embedded.object_templates, embedded.live_templates)


@pytest.mark.parametrize("cut, message", [("Live Subject Prompts", "no prompts under 'Live Subject Prompts'"),
                                          ("subject_name,class", "no 'subject_name,class' table")])
def test_malformed_prompts_file_is_refused(cut, message):
    with pytest.raises(DreamBenchError, match=message):
        dataset.parse_prompts_file(EXCERPT.replace(cut, "something else"), "x.txt")


def _photo(path, size=(40, 30), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_dataset_folder_subjects_and_prompts(tmp_path):
    root = tmp_path / "dreambooth"
    with pytest.raises(DreamBenchError, match="does not exist.*google/dreambooth"):
        dataset.dataset_folder(root)
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / protocol.PROMPTS_FILE).write_text(EXCERPT)
    _photo(root / "dataset" / "dog" / "00.jpg")
    _photo(root / "dataset" / "backpack" / "00.jpg")
    _photo(root / "dataset" / "backpack" / "01.png")
    folder = dataset.dataset_folder(root)  # the repository root works, and so does dataset/ itself
    assert folder == root / "dataset" == dataset.dataset_folder(root / "dataset")
    prompts = dataset.load_prompts(folder)
    dog, backpack = dataset.subjects(folder, prompts, ["dog", "backpack"])
    assert (dog.live, dog.kind, backpack.live, backpack.kind) == (True, "live", False, "object")
    assert [p.name for p in backpack.photos] == ["00.jpg", "01.png"]
    assert dog.prompts("sks") == ["a sks dog wearing a red hat", "a sks dog in a purple wizard outfit"]
    assert backpack.prompts("sks", limit=1) == ["a sks backpack in the jungle"]
    with pytest.raises(DreamBenchError, match="unknown subject.*nope.*lists: backpack, bear_plushie, dog"):
        dataset.subjects(folder, prompts, ["dog", "nope"])
    with pytest.raises(DreamBenchError, match="bear_plushie is missing"):
        dataset.subjects(folder, prompts)  # every subject of the table, one folder absent


def test_without_prompts_file_the_embedded_copy_is_used(tmp_path):
    _photo(tmp_path / "dog" / "00.jpg")
    folder = dataset.dataset_folder(tmp_path)
    prompts = dataset.load_prompts(folder)
    assert prompts.source.startswith("the copy") and len(prompts.classes) == 30
    (subject,) = dataset.subjects(folder, prompts, ["dog"])
    assert subject.prompts("sks")[10] == "a sks dog wearing a red hat"


def test_photos_are_centre_cropped_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)  # landscape: crop columns 10..40
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = dataset.load_photos([tmp_path / "a.png"], 16)
    want = Image.fromarray(arr[:, 10:40]).resize((16, 16), Image.Resampling.LANCZOS)
    assert out.shape == (1, 16, 16, 3)
    assert torch.equal(out[0], torch.from_numpy(np.asarray(want, dtype=np.float32) / 255.0))


def test_method_specs():
    assert methods.parse_method("plain") == ("plain",)
    assert methods.parse_method("anchor+dco") == ("anchor", "dco")
    for bad, message in (("lora", "choose from plain"), ("plain+dco", "does not chain"), ("dco+dco", "twice")):
        with pytest.raises(DreamBenchError, match=message):
            methods.parse_method(bad)


def test_aggregate_is_the_mean_over_subjects():
    def result(subject, kind, dino, clip_i, clip_t, guidance="cfg"):
        return {"subject": subject, "kind": kind, "regularizer": "plain", "guidance": guidance, "class": "x",
                "scores": {"dino": dino, "clip_i": clip_i, "clip_t": clip_t}}

    results = [result("a", "object", 0.5, 0.7, 0.30), result("b", "object", 0.7, 0.9, 0.20),
               result("c", "live", 0.2, 0.4, 0.25), result("a", "object", 0.1, 0.1, 0.1, guidance="personalization")]
    rows = {(r["guidance"], r["group"]): r for r in report.aggregate(results)}
    assert rows["cfg", "all"]["subjects"] == 3
    assert rows["cfg", "all"]["dino"] == pytest.approx((0.5 + 0.7 + 0.2) / 3)
    assert rows["cfg", "objects"]["clip_t"] == pytest.approx(0.25)
    assert rows["cfg", "objects"]["clip_i_std_over_subjects"] == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert rows["cfg", "live"]["clip_i"] == pytest.approx(0.4)
    assert ("personalization", "live") not in rows and rows["personalization", "all"]["subjects"] == 1
    assert "| plain | cfg | objects | 2 | 0.6000 | 0.8000 | 0.2500 |" in report.table(report.aggregate(results))


def test_a_job_record_carries_the_run_and_keys_the_subject_and_method(tmp_path):
    """What a worker receives: the options back as they were (paths absolute), the subject's photos by content; the
    key changes with the subject, the method, a setting or a photo, and not otherwise."""
    import dataclasses
    import json

    from driftless.bench.dreambench import runner
    from driftless.bench.dreambench.dataset import Subject
    from driftless.sweeps.spec import content_key

    photo = tmp_path / "00.jpg"
    photo.write_bytes(b"a photo")
    subject = Subject("dog", "dog", True, (photo,), ("a {0} {1}",))
    options = runner.Options(dataset=tmp_path / "ds", checkpoint=tmp_path / "m.safetensors", clip=tmp_path / "clip",
                             dino=tmp_path / "dino", out=tmp_path / "out", subjects=["dog"], guidance=["cfg", "personalization"])
    record = json.loads(json.dumps(runner.job_record(options, subject, "anchor")))
    assert runner.options_from_record(record["options"]) == options
    assert record["axes"] == {"subject": "dog", "regularizer": "anchor", "seed": 0}
    key = content_key(record)
    assert content_key(runner.job_record(options, subject, "anchor")) == key
    others = [runner.job_record(options, subject, "plain"), runner.job_record(dataclasses.replace(options, steps=7), subject, "anchor"),
              runner.job_record(options, dataclasses.replace(subject, name="dog2"), "anchor")]
    photo.write_bytes(b"another photo")
    others.append(runner.job_record(options, subject, "anchor"))
    assert len({content_key(r) for r in others} | {key}) == 5
