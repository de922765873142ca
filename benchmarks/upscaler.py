"""Seconds per x2 upscale, minunet's UpscalePipeline vs diffusers' StableDiffusionLatentUpscalePipeline, same run.

    python benchmarks/upscaler.py [--steps 20] [--size 16] [--repeat 3]
The model is the tests' tiny latent upscaler (tests/pipes.py: the K-UNet's structure at widths 32 / 64, tiny VAE and
text encoder), saved in the diffusers layout and loaded by both libraries. Input: SD latents (B=1, 4, size, size),
output an image; guidance 0 (the documented use) and 9 (the default). Runs are interleaved; ratio = minunet /
diffusers of the fastest runs (median in brackets; <= 1 is the target). CUDA is used when present.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import pipes  # noqa: E402
from pipeline import seconds  # noqa: E402  (benchmarks/pipeline.py: interleaved fastest / median)

from minunet.pipelines.upscale import UpscalePipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=16, help="side of the input latents (a multiple of 4, >= 8)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.steps} Euler steps, "
          f"{args.size}x{args.size} -> {2 * args.size}x{2 * args.size} latents")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = pipes.latent_upscaler_pipeline(Path(tmp)).to(device)
        theirs.set_progress_bar_config(disable=True)
        ours = UpscalePipeline.from_pretrained(tmp, device=device)
        low = torch.randn(1, 4, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
        for guidance in (0.0, 9.0):
            kw = dict(prompt="a red fox in the snow", image=low, num_inference_steps=args.steps,
                      guidance_scale=guidance)
            t = seconds({"ours": lambda: ours(**kw, generator=torch.Generator().manual_seed(0), progress=False),
                         "theirs": lambda: theirs(**kw, generator=torch.Generator().manual_seed(0))}, args.repeat)
            (a, am), (b, bm) = t["ours"], t["theirs"]
            print(f"guidance {guidance:<4} minunet {a:7.3f} s/upscale [{am:.3f}]   diffusers {b:7.3f} s/upscale "
                  f"[{bm:.3f}]   ratio {a / b:5.2f} (fastest run; median ratio {am / bm:.2f})")


if __name__ == "__main__":
    main()
