"""`./driftless bench dreambench` end to end on a fake DreamBooth dataset: the folder layout and prompts file of
google/dreambooth with two subjects (a cat, live; a coffee cup, an object) photographed from skimage.data, the tiny
SD1.5-shaped model written as a checkpoint file, and tiny random CLIP / DINO folders. A small protocol (2 prompts x
2 images, 2 training steps, 2 sampling steps) keeps it to seconds; the defaults are the standard protocol."""

import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

SMALL = ["--steps", "2", "--prompts-limit", "2", "--images-per-prompt", "2", "--sample-steps", "2", "--resolution", "64"]
SUBJECTS = {"cat": ("cat", "chelsea"), "coffee": ("cup", "coffee")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny-model forwards run fastest on one thread; two contend with whatever else shares these 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(comfy_host, tmp_path_factory):
    """(dataset root, checkpoint, clip folder, dino folder)."""
    from driftless.bench.dreambench import protocol
    from driftless.tinymodels.build import build_tiny_model
    from driftless.tinymodels.checkpoint import save_tiny_checkpoint
    from driftless.tinymodels.metrics_backbones import save_clip, save_dino
    from skimage import data

    root = tmp_path_factory.mktemp("dreambench")
    folder = root / "dreambooth" / "dataset"
    for name, (_, picture) in SUBJECTS.items():
        photo = Image.fromarray(getattr(data, picture)())
        w, h = photo.size
        for i, box in enumerate([(0, 0, w, h), (0, 0, 3 * w // 4, h), (w // 4, h // 5, w, h)]):
            (folder / name).mkdir(parents=True, exist_ok=True)
            photo.crop(box).save(folder / name / f"{i:02d}.jpg", quality=90)
    lines = ["Classes", "", "subject_name,class", *(f"{n},{c}" for n, (c, _) in SUBJECTS.items()), "", "Prompts", "",
             "Object Prompts", "", "prompt_list = ["]
    lines += [f"'{t}'.format(unique_token, class_token)," for t in protocol.OBJECT_PROMPTS]
    lines += ["]", "", "Live Subject Prompts", "", "prompt_list = ["]
    lines += [f"'{t}'.format(unique_token, class_token)," for t in protocol.LIVE_PROMPTS] + ["]", ""]
    (folder / protocol.PROMPTS_FILE).write_text("\n".join(lines))
    checkpoint = save_tiny_checkpoint(root / "models" / "tiny-sd15.safetensors", "sd15-tiny",
                                      *build_tiny_model("sd15-tiny", 0))
    clip, dino = save_clip(root / "models" / "clip", seed=0), save_dino(root / "models" / "dino", seed=1)
    return root / "dreambooth", checkpoint, clip, dino


def argv(inputs, out, *extra):
    dataset, checkpoint, clip, dino = inputs
    return ["--dataset", str(dataset), "--checkpoint", str(checkpoint), "--clip", str(clip), "--dino", str(dino),
            "--out", str(out), *SMALL, *extra]


def bench(args) -> int:
    from driftless.bench.dreambench.__main__ import main

    return main(args, log=lambda *_: None)


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("dreambench_out")
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization")) == 0
    return out


def snapshot(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("dreambench.")}


def read_images(paths) -> torch.Tensor:
    """The PNGs as ComfyUI's LoadImage gives them: float IMAGE [N, H, W, 3] = pixel / 255."""
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0) for p in paths])


def test_results_have_the_protocol_counts_and_the_metrics_module_scores(first_run, inputs):
    from driftless.bench.dreambench.dataset import load_photos
    from driftless.metrics.backbones import load_backbone
    from driftless.metrics.evaluate import personalization_metrics

    clip, dino = load_backbone(inputs[2]), load_backbone(inputs[3])
    for subject, (noun, _) in SUBJECTS.items():
        assert (first_run / "plain" / subject / "lora.safetensors").is_file()
        for guidance in ("cfg", "personalization"):
            folder = first_run / "plain" / subject / guidance
            result = json.loads((folder / "result.json").read_text())
            assert result["counts"] == {"prompts": 2, "images_per_prompt": 2, "generated": 4, "reference": 3}
            assert result["kind"] == ("live" if subject == "cat" else "object")
            templates = ("a {0} {1} in the jungle", "a {0} {1} in the snow")
            assert result["prompts"] == [t.format("sks", noun) for t in templates]
            assert result["images"] == ["images/00_0.png", "images/00_1.png", "images/01_0.png", "images/01_1.png"]
            assert sorted(p.name for p in (folder / "images").iterdir()) == [p.split("/")[1] for p in result["images"]]
            for key in ("dino", "clip_i", "clip_t"):
                assert len(result["metrics"]["metrics"][key]["per_image"]) == 4
            # CLIP-T reads the prompt without the identifier
            assert result["metrics"]["clip_t_prompts"][0] == f"a {noun} in the jungle"

            photos = sorted((inputs[0] / "dataset" / subject).glob("*.jpg"))
            again = personalization_metrics(read_images(folder / p for p in result["images"]), load_photos(photos, 64),
                                            result["prompts"], clip=clip, dino=dino, identifiers=["sks"],
                                            class_noun=noun)
            for key in ("dino", "clip_i", "clip_t"):
                assert result["scores"][key] == pytest.approx(again.scores[key].mean, abs=1e-6)


def test_aggregate_is_the_mean_of_the_subjects(first_run):
    table = json.loads((first_run / "dreambench.json").read_text())
    assert table["command"].startswith("./driftless bench dreambench --dataset ") and "machine" in table and "date" in table
    rows = {(r["guidance"], r["group"]): r for r in table["rows"]}
    assert set(rows) == {(g, s) for g in ("cfg", "personalization") for s in ("all", "objects", "live")}
    for guidance in ("cfg", "personalization"):
        cat = json.loads((first_run / "plain" / "cat" / guidance / "result.json").read_text())["scores"]
        cup = json.loads((first_run / "plain" / "coffee" / guidance / "result.json").read_text())["scores"]
        for key in ("dino", "clip_i", "clip_t"):
            assert rows[guidance, "all"][key] == pytest.approx((cat[key] + cup[key]) / 2)
            assert rows[guidance, "live"][key] == pytest.approx(cat[key])
            assert rows[guidance, "objects"][key] == pytest.approx(cup[key])
        assert rows[guidance, "all"]["subjects"] == 2
    markdown = (first_run / "dreambench.md").read_text()
    assert "| plain | cfg | live | 1 |" in markdown and "- machine:" in markdown


def test_rerun_skips_completed_subjects(first_run, tmp_path, monkeypatch, inputs):
    from driftless.bench.dreambench.sampling import Sampler
    from driftless.trainers import loop

    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    before = snapshot(out)

    def refuse(*_, **__):
        raise AssertionError("a completed subject was run again")

    monkeypatch.setattr(loop, "train_lora", refuse)
    monkeypatch.setattr(Sampler, "images", refuse)
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization")) == 0
    assert snapshot(out) == before


def test_half_finished_subject_redoes_only_what_is_missing(first_run, tmp_path, monkeypatch, inputs):
    from driftless.bench.dreambench.sampling import Sampler
    from driftless.trainers import loop

    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    folder = out / "plain" / "cat" / "cfg"
    old_image = (folder / "images" / "01_1.png").read_bytes()
    old_scores = json.loads((folder / "result.json").read_text())["scores"]
    (folder / "images" / "01_1.png").unlink()  # as if the run stopped while writing prompt 1's images
    (folder / "result.json").unlink()
    untouched = {k: v for k, v in snapshot(out).items() if not k.startswith("plain/cat/cfg/")}

    def refuse(*_, **__):
        raise AssertionError("the LoRA on disk should have been reused")

    sampled, original = [], Sampler.images

    def counting(self, guider, prompt, seeds):
        sampled.append((prompt, seeds))
        return original(self, guider, prompt, seeds)

    monkeypatch.setattr(loop, "train_lora", refuse)
    monkeypatch.setattr(Sampler, "images", counting)
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization")) == 0
    assert sampled == [("a sks cat in the snow", [2, 3])]  # prompt 1 only; its seeds as in the first run
    assert (folder / "images" / "01_1.png").read_bytes() == old_image  # the same image again
    assert json.loads((folder / "result.json").read_text())["scores"] == pytest.approx(old_scores, abs=1e-7)
    assert {k: v for k, v in snapshot(out).items() if not k.startswith("plain/cat/cfg/")} == untouched


def test_images_of_another_lora_are_sampled_again(first_run, tmp_path, monkeypatch, inputs):
    from driftless.bench.dreambench.sampling import Sampler

    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    folder = out / "plain" / "coffee" / "personalization"
    record = json.loads((folder / "sampling.json").read_text())
    (folder / "sampling.json").write_text(json.dumps({**record, "lora": "0123456789abcdef"}))  # as if made by another LoRA
    (folder / "result.json").unlink()
    (folder / "images" / "stale.png").write_bytes(b"")
    sampled, original = [], Sampler.images
    monkeypatch.setattr(Sampler, "images", lambda self, *a: sampled.append(a[1]) or original(self, *a))
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization")) == 0
    assert sampled == ["a sks cup in the jungle", "a sks cup in the snow"]  # every prompt, the old images deleted
    assert not (folder / "images" / "stale.png").exists()
    assert json.loads((folder / "sampling.json").read_text()) == record


def test_other_settings_in_the_same_folder_stop_the_run(first_run, tmp_path, inputs, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    args = argv(inputs, out, "--guidance", "cfg")
    args[args.index("--steps") + 1] = "3"
    assert bench(args) == 2
    err = capsys.readouterr().err
    assert "was made with other settings (training.training.steps: 2 -> 3)" in err and "Use another --out" in err


def test_prior_preservation_and_a_chain_train_with_their_regularizers(inputs, tmp_path):
    from driftless.lora.files import load_lora

    out = tmp_path / "out"
    args = argv(inputs, out, "--regularizer", "anchor+prior", "--subjects", "coffee", "--class-images", "2",
                "--prompts-limit", "1", "--images-per-prompt", "1")
    assert bench(args) == 0
    meta = load_lora(out / "anchor+prior" / "coffee" / "lora.safetensors").metadata
    assert [r["name"] for r in meta["regularizers"]] == ["parameter_anchor", "prior_preservation"]
    assert meta["regularizers"][1]["class_prompt"] == "a photo of cup" and meta["regularizers"][1]["class_images"] == 2
    assert len(list((out / "class_images").glob("*.safetensors"))) == 1
    result = json.loads((out / "anchor+prior" / "coffee" / "cfg" / "result.json").read_text())
    assert result["counts"]["generated"] == 1 and result["regularizer"] == "anchor+prior"


@pytest.mark.parametrize("change, message", [
    (("--dataset", "{tmp}/nowhere"), r"dataset folder .*nowhere does not exist"),
    (("--subjects", "cat,nope"), r"unknown subject\(s\) nope; .* lists: cat, coffee"),
    (("--checkpoint", "{tmp}/missing.safetensors"), r"checkpoint .*missing.safetensors not found"),
    (("--clip", "{dino}"), r"--clip .* holds a dino model, not a clip model"),
    (("--dino", "{tmp}/no_dino"), r"--dino folder .*no_dino does not exist"),
    (("--regularizer", "lora"), r"--regularizer 'lora': choose from plain"),
])
def test_bad_inputs_give_a_clear_error(inputs, tmp_path, capsys, change, message):
    import re

    args = argv(inputs, tmp_path / "out")
    flag, value = change
    value = value.format(tmp=tmp_path, dino=inputs[3])
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert bench(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


def test_checkpoint_loading(inputs, tmp_path):
    from driftless.bench.dreambench.dataset import DreamBenchError
    from driftless.bench.dreambench.model import load_checkpoint
    from driftless.lora.storage import save_safetensors_atomic

    model, _, _ = load_checkpoint(inputs[1])  # tiny: built from its config, weights from the file
    assert model.model.diffusion_model.input_blocks[0][0].weight.shape[0] == 32
    junk = tmp_path / "junk.safetensors"
    save_safetensors_atomic({"some.tensor": torch.zeros(3)}, junk)
    with pytest.raises(DreamBenchError, match=r"junk.safetensors: ComfyUI could not load it"):
        load_checkpoint(junk)  # a regular file goes through comfy.sd.load_checkpoint_guess_config
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(DreamBenchError, match=r"only .safetensors files are loaded"):
        load_checkpoint(pickled)


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_tiny_checkpoint_round_trip(comfy_host, tmp_path, architecture):
    from driftless.tinymodels.build import build_tiny_model
    from driftless.tinymodels.checkpoint import load_tiny_checkpoint, save_tiny_checkpoint, tiny_architecture

    model, clip, vae = build_tiny_model(architecture, 5)  # seed 5: differs from the loader's seed-0 modules
    path = save_tiny_checkpoint(tmp_path / "m.safetensors", architecture, model, clip, vae)
    assert tiny_architecture(path) == architecture
    loaded_model, loaded_clip, loaded_vae = load_tiny_checkpoint(path)
    for a, b in ((model.model.diffusion_model, loaded_model.model.diffusion_model),
                 (vae.first_stage_model, loaded_vae.first_stage_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = clip.tokenize("a photo of sks dog")
    assert torch.equal(clip.encode_from_tokens(tokens), loaded_clip.encode_from_tokens(tokens))


def test_on_ray_a_worker_gives_the_same_scores_and_a_rerun_skips(first_run, inputs, tmp_path):
    """--workers 1: the subjects run as sweep jobs in a Ray worker of 1 CPU slot (its own ComfyUI, the model loaded
    there): the same files and scores as the run in this process (same seeds, one thread both), the sweep's folder
    gone once every job is done; a rerun finds every subject complete and rewrites nothing."""
    out = tmp_path / "out"
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization", "--workers", "1")) == 0
    for subject in SUBJECTS:
        for guidance in ("cfg", "personalization"):
            here = json.loads((first_run / "plain" / subject / guidance / "result.json").read_text())
            there = json.loads((out / "plain" / subject / guidance / "result.json").read_text())
            assert there["settings"] == here["settings"] and there["images"] == here["images"]
            assert there["scores"] == pytest.approx(here["scores"], abs=1e-6)
    assert not (out / "sweep").exists()
    before = snapshot(out)
    assert bench(argv(inputs, out, "--guidance", "cfg", "personalization", "--workers", "1")) == 0
    assert snapshot(out) == before


def test_a_failing_subject_is_reported_and_the_others_are_scored(inputs, tmp_path, monkeypatch, capsys):
    from driftless.bench.dreambench.subject import SubjectRun

    original = SubjectRun.run

    def fail_on_the_cup(self):
        if self.subject.name == "coffee":
            raise RuntimeError("out of memory, say")
        return original(self)

    monkeypatch.setattr(SubjectRun, "run", fail_on_the_cup)
    out = tmp_path / "out"
    assert bench(argv(inputs, out, "--prompts-limit", "1", "--images-per-prompt", "1")) == 1
    assert "1 job(s) failed: coffee / plain: RuntimeError: out of memory, say" in capsys.readouterr().err
    table = json.loads((out / "dreambench.json").read_text())
    assert {r["subject"] for r in table["subjects"]} == {"cat"} and list(table["failed"]) == ["coffee / plain"]
    [failure] = [json.loads(p.read_text()) for p in (out / "sweep" / "failed").glob("*.json")]
    assert failure["label"] == "coffee / plain" and "out of memory" in failure["error"]
