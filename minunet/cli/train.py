"""`minunet train-tiny`: the recipe of the model shipped as `--model tiny` (minunet.training.tiny), resumable, and
data-parallel under torchrun:

    minunet train-tiny --out runs/tiny --threads 1                     # the shipped file's recipe
    torchrun --nproc_per_node 2 -m minunet train-tiny --out runs/tiny  # the same with 2 ranks (gloo on CPU)
"""
from pathlib import Path

from ..training import MODELS, recipe_module
from .common import UsageError


def add_parser(sub):
    p = sub.add_parser("train-tiny", help="train a tiny model on drawn shapes (--model tiny: VAE, then UNet + text; "
                                          "tiny-video: a video UNet on them)")
    p.add_argument("--out", required=True, help="folder for checkpoints, loss.tsv, samples/ and model.safetensors")
    p.add_argument("--model", default="tiny", help="which recipe: " + " | ".join(MODELS))
    p.add_argument("--stage", default="all",
                   help="a stage of the recipe, or all (tiny: vae, then decoder (fine-tuned on the frozen encoder), "
                        "then unet (with the text encoder), then refine (the UNet alone); tiny-video: unet (the video "
                        "UNet))")
    p.add_argument("--steps", type=int, default=None, help="steps of each stage run (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch, all ranks together "
                                                                "(default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the stage checkpoints in --out")
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"],
                   help="bf16: autocast where the recipe measured it faster (the VAE stage)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (the recipe: 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet blocks in backward")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def check_args(args):
    if args.model not in MODELS:
        raise UsageError(f"--model {args.model}: no such recipe (known: {', '.join(MODELS)})")
    stages = recipe_module(args.model).STAGES
    if args.stage != "all" and args.stage not in stages:
        raise UsageError(f"--stage {args.stage}: not a stage of --model {args.model} (known: {', '.join(stages)}, "
                         "all)")
    for name in ("steps", "batch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a positive integer")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    existing = sorted(p.name for p in out.glob("*-state.safetensors")) if out.is_dir() else []
    if existing and not args.resume:
        raise UsageError(f"--out {out}: holds checkpoints ({', '.join(existing)}); add --resume to continue "
                         "them, or choose another folder")


def cmd_train(args):
    import torch

    from ..errors import CheckpointError
    from ..training import distributed

    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    world = distributed.start()
    try:
        if args.batch_size is not None:
            world.shard(args.batch_size)  # a batch that does not split over the ranks: one line, before any work
        recipe = recipe_module(args.model)
        stages = recipe.STAGES if args.stage == "all" else (args.stage,)
        path = recipe.train(recipe.RECIPE, args.out, stages=stages, seed=args.seed, steps=args.steps,
                            batch=args.batch_size, mixed_precision=args.mixed_precision,
                            progress=not args.no_progress, gradient_checkpointing=args.gradient_checkpointing,
                            world=world)
    except CheckpointError:  # a missing or mismatched stage file: exit 1
        raise
    except ValueError as e:  # a batch that does not split over the ranks
        raise UsageError(str(e)) from None
    finally:
        distributed.stop(world)
    if world.main:
        out = Path(args.out)  # a stage's own file (vae, decoder), else its checkpoint (unet, before refine)
        written = [p for p in (out / f"{args.stage}.safetensors", out / f"{args.stage}-state.safetensors")
                   if p.is_file()]
        done = path if path is not None else (written + [out])[0]
        print(f"wrote {done}")
