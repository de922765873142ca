"""The shipped tiny model's figures for the README: VAE PSNR, prompt adherence per sampler (and with guidance 1,
and with FreeU in each stage convention), seconds per image, and the pictures under docs/.

    python benchmarks/tiny_model.py [--model FILE] [--docs docs] [--threads 2]
    python benchmarks/tiny_model.py --speed     # adherence under each speed setting of benchmarks/speed.py
    python benchmarks/tiny_model.py --sweep 1   # shape per guidance scale, seed 1 (how its default was chosen)


Adherence: every colour x shape x background of the plain form "a {colour} {shape} on a {background}
background" (colour != background, 168 prompts), one batch, seed 0, judged by tests/shapes_judge.py.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from shapes_judge import PALETTE, score  # noqa: E402

from minunet import FreeU, Pipeline  # noqa: E402
from minunet.training import tiny  # noqa: E402

SHAPES = ("circle", "square", "triangle")
COMBOS = [(c, s, b) for c in PALETTE for s in SHAPES for b in PALETTE if b != c]
RUNS = [("euler, 20 steps", dict(sampler="euler", num_inference_steps=20)),
        ("euler_a, 20 steps", dict(sampler="euler_a", num_inference_steps=20)),
        ("ddim, 20 steps", dict(sampler="ddim", num_inference_steps=20)),
        ("dpmpp_2m, 20 steps", dict(sampler="dpmpp_2m", num_inference_steps=20)),
        ("dpmpp_2m, 10 steps", dict(sampler="dpmpp_2m", num_inference_steps=10)),
        ("euler, 20 steps, guidance 1", dict(sampler="euler", num_inference_steps=20, guidance_scale=1.0)),
        ("euler, 20 steps, FreeU sd15 (official stages, v2)", dict(sampler="euler", num_inference_steps=20,
                                                                    freeu="sd15")),
        ("euler, 20 steps, FreeU sd15-diffusers (diffusers stages, v1)", dict(sampler="euler", num_inference_steps=20,
                                                                               freeu="sd15-diffusers"))]


# the speed settings of benchmarks/speed.py on the tiny model, euler 20 steps: (dtype, DeepCache interval, ToMe ratio).
# The tiny UNet has no attention at full resolution (level 0), where ToMe merges by default (max_downsample=1): there
# it would change nothing, so it merges at level 1 (max_downsample=2, as SDXL needs).
SPEED_RUNS = [("float32 (what auto picks for the tiny model)", torch.float32, None, None),
              ("bfloat16 (what auto picks for full-size models on this CPU)", torch.bfloat16, None, None),
              ("DeepCache 3", torch.float32, 3, None), ("DeepCache 5", torch.float32, 5, None),
              ("ToMe 0.5 (max_downsample 2)", torch.float32, None, 0.5),
              ("all together (bfloat16, DeepCache 3, ToMe 0.5)", torch.bfloat16, 3, 0.5)]


def speed_table():
    """Adherence (168 prompts) and the images' difference from the float32 run, per speed setting."""
    rows = ["| setting (euler, 20 steps) | colour | background | shape | mean abs. difference from float32 (0..255) |",
            "|---|---|---|---|---|"]
    prompts, ref = [plain(*x) for x in COMBOS], None
    for name, dtype, interval, ratio in SPEED_RUNS:
        pipe = Pipeline.tiny(dtype=dtype)
        if interval is not None:
            pipe.enable_deepcache(cache_interval=interval, cache_branch_id=0)
        if ratio is not None:
            pipe.enable_tome(ratio, max_downsample=2)
        images = generate(pipe, prompts, sampler="euler", num_inference_steps=20).float()
        ref = images if ref is None else ref
        s = score(images, COMBOS)
        rows.append(f"| {name} | {s['colour']:.0%} | {s['background']:.0%} | {s['shape']:.0%} | "
                    f"{float((images - ref).abs().mean()) * 255:.2f} |")
        print(rows[-1], flush=True)
    return rows


def plain(c, s, b):
    return f"a {c} {s} on a {b} background"


def generate(pipe, prompts, freeu=None, seed=0, **kw):
    if freeu is not None:
        pipe.enable_freeu(FreeU.preset(freeu))
    try:
        return pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="pt", progress=False,
                    **kw).images
    finally:
        pipe.disable_freeu()


def adherence_table(pipe):
    rows = ["| run | colour | background | shape |", "|---|---|---|---|"]
    for name, kw in RUNS:
        s = score(generate(pipe, [plain(*x) for x in COMBOS], **kw), COMBOS)
        rows.append(f"| {name} | {s['colour']:.0%} | {s['background']:.0%} | {s['shape']:.0%} |")
        print(rows[-1], flush=True)
    return rows


SWEEP = (1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0)
SWEEP_SAMPLERS = (("euler", 20), ("euler_a", 20), ("ddim", 20), ("dpmpp_2m", 20), ("dpmpp_2m", 10))


def sweep_table(pipe, seed):
    """Shape right (168 prompts) per guidance scale and sampler, with generator seed `seed`: the default guidance
    is chosen on seed 1, so that the tests' seed 0 is not what it was chosen on."""
    rows = ["| guidance | " + " | ".join(f"{s} {n}" for s, n in SWEEP_SAMPLERS) + " | colour (all) |",
            "|---|" + "---|" * (len(SWEEP_SAMPLERS) + 1)]
    for g in SWEEP:
        scores = [score(generate(pipe, [plain(*x) for x in COMBOS], seed=seed, sampler=s, num_inference_steps=n,
                                 guidance_scale=g), COMBOS) for s, n in SWEEP_SAMPLERS]
        colour = min(x["colour"] for x in scores)
        rows.append(f"| {g:g} | " + " | ".join(f"{x['shape']:.0%}" for x in scores) + f" | >= {colour:.0%} |")
        print(rows[-1], flush=True)
    return rows


def grid(pipe, path, freeu=None):
    """Rows: object colours; columns: shapes; background: the colour four places on in the palette."""
    names = list(PALETTE)
    prompts = [plain(c, s, names[(i + 4) % len(names)]) for i, c in enumerate(names) for s in SHAPES]
    images = generate(pipe, prompts, freeu=freeu, num_inference_steps=30)
    tiny.save_grid(images * 2 - 1, len(SHAPES), path, scale=4)


def seconds_per_image(pipe, n=5):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        pipe("a red circle on a blue background", generator=torch.Generator().manual_seed(0), progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a train-tiny model.safetensors (default: the shipped one)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed", action="store_true", help="only the adherence table of the speed settings")
    ap.add_argument("--sweep", type=int, default=None, metavar="SEED",
                    help="only the shape score per guidance scale and sampler, with this generator seed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed:
        return print("\n".join(speed_table()))
    pipe = Pipeline.tiny()
    if args.model is not None:
        other = Pipeline.from_single_file(args.model)  # the shipped model's size and default guidance
        pipe = Pipeline.from_pipe(pipe, unet=other.unet, vae=other.vae, text=other.text)
    if args.sweep is not None:
        return print("\n".join(sweep_table(pipe, args.sweep)))
    print(f"VAE PSNR (256 held-out pictures, posterior mean): {tiny.vae_psnr(pipe.vae, tiny.TINY, 0):.1f} dB")
    print(f"seconds per image (30 Euler steps, guidance {pipe.default_guidance:g}, {args.threads} threads, median "
          f"of 5): {seconds_per_image(pipe):.3f}")
    docs = Path(args.docs)
    grid(pipe, docs / "tiny-grid.png")
    grid(pipe, docs / "tiny-grid-freeu.png", freeu="sd15")
    print("\n".join(adherence_table(pipe)))


if __name__ == "__main__":
    main()
