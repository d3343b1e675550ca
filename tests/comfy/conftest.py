"""Tier `comfy`: one real ComfyUI booted in-process for the session, with the pack loaded from this checkout."""

import io

import pytest


@pytest.fixture
def one_thread():
    """The tiny models' matrices are too small to split across threads: on a shared 2-core machine two
    threads made a training step ~10× slower than one (0.7–1.0 s vs 0.09 s, measured); one thread also keeps
    every sum in one order, so reruns are bit-identical. Restored after. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    from driftless.headless import host

    return host.boot(tmp_path_factory.mktemp("comfy_base"), cpu=True)


@pytest.fixture(scope="module")
def built(comfy_host):
    """`built(architecture)`: (MODEL, CLIP, VAE, TrainingData) of a tiny model, built once per test module (SD3.5's
    T5 keeps XXL's width: ~3 s a build): two seeded random 64-px images captioned 'a photo of sks cat'."""
    import torch

    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData

    cache = {}

    def get(architecture="sd15-tiny"):
        if architecture not in cache:
            model, clip, vae = build_tiny_model(architecture, 0)
            encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
            images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
            data = TrainingData(vae.encode(images), [encode("a photo of sks cat")] * 2, encode(""), ["a photo of sks cat"] * 2)
            cache[architecture] = (model, clip, vae, data)
        return cache[architecture]

    return get


@pytest.fixture
def checkpoints(tmp_path):
    """`checkpoints.save` as train_lora's on_checkpoint: writes each resume state into tmp_path and keeps its path in
    `checkpoints.paths`."""
    from types import SimpleNamespace

    from driftless.trainers.state import save_state

    paths = []

    def save(**state):
        path = tmp_path / f"step{state['step']}.train-state"
        save_state(path, **state)
        paths.append(path)
        return path

    return SimpleNamespace(save=save, paths=paths)


@pytest.fixture
def run_prompt(comfy_host):
    """Validate and execute an API-format prompt with ComfyUI's own executor; returns the RunResult.

    Validation problems fail the test with ComfyUI's messages, as POST /prompt would report them.
    """
    from driftless.headless import runner

    def run(prompt: dict, expect_valid: bool = True):
        outputs, problems = runner.validate(prompt, "test")
        if not expect_valid:
            return problems
        assert problems == {}, runner.format_validation_errors(problems, prompt)
        log = io.StringIO()
        result = runner.execute(prompt, outputs, stream=log)
        result.log = log.getvalue()
        return result

    return run


@pytest.fixture
def txt2img(comfy_host):
    """An API-format tiny-model text-to-image graph built with ComfyUI's GraphBuilder."""
    from comfy_execution.graph_utils import GraphBuilder

    def build(architecture="sd15-tiny", seed=0, steps=4, prompt="a photo of a cat", size=64, batch=1, prefix="t"):
        g = GraphBuilder(prefix="")
        model = g.node("DriftlessTinyModel", id="model", architecture=architecture, seed=seed)
        pos = g.node("CLIPTextEncode", id="pos", clip=model.out(1), text=prompt)
        neg = g.node("CLIPTextEncode", id="neg", clip=model.out(1), text="")
        latent = g.node("EmptyLatentImage", id="latent", width=size, height=size, batch_size=batch)
        sampled = g.node(
            "KSampler", id="sampler", model=model.out(0), positive=pos.out(0), negative=neg.out(0),
            latent_image=latent.out(0), seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
            scheduler="normal", denoise=1.0,
        )
        image = g.node("VAEDecode", id="decode", samples=sampled.out(0), vae=model.out(2))
        g.node("SaveImage", id="save", images=image.out(0), filename_prefix=prefix)
        return g.finalize()

    return build


def photos(n: int, size: int = 64):
    """n real photographs from scikit-image's bundled data, as a ComfyUI IMAGE batch [n, size, size, 3]."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    names = ["chelsea", "astronaut", "coffee", "rocket", "cat"]
    out = []
    for i in range(n):
        arr = getattr(data, names[i % len(names)])()
        img = Image.fromarray(arr).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(out)


@pytest.fixture
def tiny_data(comfy_host):
    """(MODEL, CLIP, VAE, TrainingData) for a tiny model and n photos with one shared caption."""
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.data import TrainingData

    def make(architecture="sd15-tiny", n=2, caption="a photo of sks cat", seed=0):
        model, clip, vae = build_tiny_model(architecture, seed)
        latents = vae.encode(photos(n))
        encode = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
        return model, clip, vae, TrainingData(latents, [encode(caption)] * n, encode(""), [caption] * n)

    return make
