"""Scores of the tiny x2 latent upscaler (`--upscale tiny`) on held-out scenes, the README's table:

    python benchmarks/tiny_upscaler.py [--file runs/up/upscaler.safetensors] [--scenes 64] [--picture docs/x.png]

For each setting: PSNR (dB) against the true large picture (the upscale, a bicubic upscale of the small picture,
the frozen VAE's own round trip of the large picture), against that round trip (the upscale, a bicubic x2 of the
small picture's latents, decoded), and the latent gain (dB: latent MSE of that bicubic x2 over the upscaler's),
at 64 -> 128 px (the issue's) and 32 -> 64 px (the tiny model's size); minunet.training.tiny_upscaler.scores.
"""
import argparse
import time

import torch

from minunet.pipelines.upscale import TINY_DEFAULTS, UpscalePipeline
from minunet.training import tiny, tiny_upscaler as tu

SETTINGS = [("defaults (3 steps, guidance 1)", {}), ("1 step", dict(num_inference_steps=1)),
            ("10 steps", dict(num_inference_steps=10)), ("20 steps", dict(num_inference_steps=20)),
            ("guidance 0 (empty prompt)", dict(guidance_scale=0.0)), ("guidance 3", dict(guidance_scale=3.0)),
            ("FreeU b 1.3 / 1.4, s 0.9 / 0.2", dict(freeu=dict(s1=0.9, s2=0.2, b1=1.3, b2=1.4)))]


def pipeline(file):
    if file is None:
        return UpscalePipeline.tiny()
    from minunet.loading.unet import load_kunet_file

    return UpscalePipeline.with_tiny_parts(load_kunet_file(file, dtype=torch.float32))


@torch.no_grad()
def row(pipe, n, first, small, call):
    freeu = call.pop("freeu", None)
    if freeu is not None:
        pipe.enable_freeu(**freeu)
    start = time.perf_counter()
    h = tu.held_out(pipe, n, small, 0, first, **call)
    seconds = (time.perf_counter() - start) / n  # the whole held-out evaluation, per scene
    pipe.disable_freeu()
    return tu.scores(h), seconds, h


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", default=None, help="a K-UNet file (default: the shipped one)")
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--first", type=int, default=tiny.VALIDATION_START,
                   help="first held-out scene (the tests use VALIDATION_START; settings were chosen on others)")
    p.add_argument("--picture", default=None, help="write 8 scenes (64 -> 128 px, defaults) as a PNG grid")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = pipeline(args.file)
    print(f"defaults {TINY_DEFAULTS}, held-out scenes {args.first} .. + {args.scenes}, {args.threads} thread(s)")
    print("| scale | setting | upscaled | bicubic | VAE round trip | upscaled vs round trip | latent bicubic vs round "
          "trip | latent gain | s / scene |\n|---|---|---|---|---|---|---|---|---|")
    for small in (64, 32):
        for name, call in SETTINGS:
            figures, seconds, h = row(pipe, args.scenes, args.first, small, dict(call))
            print(f"| {small} -> {2 * small} px | {name} | " + " | ".join(f"{v:.1f}" for v in figures.values())
                  + f" | {seconds:.2f} |", flush=True)
            if args.picture is not None and small == 64 and name.startswith("defaults"):
                grid = [h[k][:8] for k in ("bicubic", "upscaled", "vae", "truth")]
                tiny.save_grid(torch.cat(grid), 8, args.picture, scale=1)


if __name__ == "__main__":
    main()
