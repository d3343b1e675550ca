"""`./driftless bench dreambench --dataset DIR --checkpoint FILE.safetensors --clip DIR --dino DIR [...]`:
DreamBench (subjects x 25 prompts x 4 images; DINO, CLIP-I, CLIP-T) from local files, resumable per subject.

Each (regularizer, subject) is one sweep job (docs/sweeps.md): one after another in this process by default (the
checkpoint loaded once); --workers N runs N at once on a local Ray instance (one GPU each where there are GPUs),
--address runs them on a Ray cluster (OUT must then be a folder every node sees).

Exit codes: 0 done, 1 some subject failed (the others are in the table; errors in OUT/sweep/failed/), 2 bad input
(the message says what to fix), 130 interrupted (rerun the same command to resume).
"""

import argparse
import pathlib
import sys

from ...headless import host
from . import protocol

DEFAULT_OUT = host.PACK_DIR / ".driftless" / "dreambench"


def parse_args(argv):
    from .methods import GUIDANCE, METHODS
    from .runner import Options

    d = Options(dataset=None, checkpoint=None, clip=None, dino=None, out=None)
    p = argparse.ArgumentParser(prog="driftless bench dreambench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    need = p.add_argument_group("local inputs (nothing is downloaded)")
    need.add_argument("--dataset", type=pathlib.Path, required=True,
                      help=f"google/dreambooth's dataset/ folder (or the repository root): <subject>/*.jpg and {protocol.PROMPTS_FILE}")
    need.add_argument("--checkpoint", type=pathlib.Path, required=True,
                      help="a single-file .safetensors checkpoint (UNet + text encoder + VAE), e.g. SD1.5 or SDXL")
    need.add_argument("--clip", type=pathlib.Path, required=True,
                      help="a transformers CLIPModel folder (config.json, model.safetensors, preprocessor_config.json, "
                      "tokenizer), e.g. openai/clip-vit-base-patch32")
    need.add_argument("--dino", type=pathlib.Path, required=True,
                      help="a transformers DINO folder, e.g. facebook/dino-vits16 (DreamBooth's ViT-S/16)")
    run = p.add_argument_group("what to run")
    run.add_argument("--subjects", help="comma-separated subject names (default: all 30)")
    run.add_argument("--regularizer", nargs="+", default=d.regularizers, metavar="METHOD",
                     help="one or more methods, each trained and scored separately: "
                     + "; ".join(f"{k}: {v}" for k, v in METHODS.items()) + ". Chain with '+', e.g. anchor+dco")
    run.add_argument("--guidance", nargs="+", default=d.guidance, choices=list(GUIDANCE),
                     help="; ".join(f"{k}: {v}" for k, v in GUIDANCE.items()) + " (each samples the same LoRA)")
    run.add_argument("--out", type=pathlib.Path,
                     help=f"where LoRAs, images and results go (default {DEFAULT_OUT}/<checkpoint name>); rerun with "
                     "the same --out to resume")
    train = p.add_argument_group("training (the Train LoRA node's defaults)")
    train.add_argument("--steps", type=int, default=d.steps, help="LoRA training steps per subject (default %(default)s)")
    train.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default %(default)s)")
    train.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, scale 1)")
    train.add_argument("--learning-rate", type=float, default=d.learning_rate, help="default %(default)s")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
    train.add_argument("--training-dtype", default=d.training_dtype, choices=("fp32", "bf16", "fp16"),
                       help="forward precision while training (default %(default)s; bf16 on recent GPUs)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower steps")
    train.add_argument("--seed", type=int, default=d.seed, help="training and sampling seed (default %(default)s)")
    train.add_argument("--identifier", default=d.identifier, help="the subject's rare token (default %(default)s)")
    train.add_argument("--caption", default=d.caption,
                       help="training caption; {0} = identifier, {1} = class noun (default '%(default)s')")
    train.add_argument("--class-images", type=int, default=d.class_images,
                       help="class images per class for --regularizer prior (default %(default)s)")
    train.add_argument("--resolution", type=int, help="training and sampling size (default: 1024 for SDXL, else 512)")
    sample = p.add_argument_group("sampling (default: DPM-Solver++ 2M, 50 steps, CFG 7.5, as in Preserve & Personalize)")
    sample.add_argument("--sampler", default=d.sampler, help="a ComfyUI sampler name (default %(default)s)")
    sample.add_argument("--scheduler", default=d.scheduler, help="a ComfyUI scheduler name (default %(default)s)")
    sample.add_argument("--sample-steps", type=int, default=d.sample_steps, help="default %(default)s")
    sample.add_argument("--cfg", type=float, default=d.cfg, help="guidance scale (default %(default)s)")
    sample.add_argument("--weak-strength", type=float, default=d.weak_strength,
                        help="personalization guidance: LoRA strength s of the unconditional branch (default %(default)s)")
    size = p.add_argument_group("protocol size (defaults: the standard protocol; smaller for a quick look)")
    size.add_argument("--prompts-limit", type=int, help=f"only the first N of the {protocol.PROMPTS_PER_SUBJECT} prompts")
    size.add_argument("--images-per-prompt", type=int, default=d.images_per_prompt, help="default %(default)s")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    where = p.add_argument_group("where the jobs run (default: one after another in this process)")
    where.add_argument("--workers", type=int, help="N subjects at once, each in its own worker of a local Ray "
                       "instance with N CPU slots; with GPUs, one GPU per job (so at most as many as there are GPUs)")
    where.add_argument("--address", help="a running Ray cluster ('auto', or HEAD:6379): one job per GPU; --out must be "
                       "a folder every node sees, and the dataset, checkpoint and backbones at the same paths on each")
    return p.parse_args(argv)


def options_from(args):
    from .runner import Options

    out = args.out or DEFAULT_OUT / pathlib.Path(args.checkpoint).stem
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    return Options(
        dataset=args.dataset, checkpoint=args.checkpoint, clip=args.clip, dino=args.dino, out=out, subjects=subjects,
        regularizers=list(dict.fromkeys(args.regularizer)), guidance=list(dict.fromkeys(args.guidance)),
        identifier=args.identifier, caption=args.caption, resolution=args.resolution, steps=args.steps, rank=args.rank,
        alpha=args.alpha, learning_rate=args.learning_rate, batch_size=args.batch_size,
        training_dtype=args.training_dtype, gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        class_images=args.class_images, sampler=args.sampler, scheduler=args.scheduler, sample_steps=args.sample_steps,
        cfg=args.cfg, weak_strength=args.weak_strength, prompts_limit=args.prompts_limit,
        images_per_prompt=args.images_per_prompt,
    )


def main(argv=None, log=print) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    host.configure_args(host.find_comfyui(), None, cpu=True if args.cpu else None)
    from ...metrics.backbones import MissingWeights
    from .dataset import DreamBenchError
    from .runner import run

    if args.workers is not None and args.workers < 1:
        print("[dreambench] error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        outcome = run(options_from(args), argv=argv, log=log, workers=args.workers, address=args.address, cpu=args.cpu)
    except (DreamBenchError, MissingWeights) as e:
        print(f"[dreambench] error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[dreambench] interrupted; rerun the same command to resume (completed subjects are kept)", file=sys.stderr)
        return 130
    if outcome["failed"]:
        print(f"[dreambench] {len(outcome['failed'])} job(s) failed: " + "; ".join(
            f"{k}: {' '.join(v.split())[:300]}" for k, v in outcome["failed"].items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
