"""Seconds per image, minunet's Pipeline vs diffusers' pipelines, same tiny random weights, same run.

    python benchmarks/pipeline.py [--steps 20] [--size 256] [--repeat 3]
The models are the tests' tiny SD and SDXL pipelines (tests/pipes.py), saved in the diffusers layout and loaded by
both libraries; the inpainting rows repaint the middle of a random picture (SD: the 9-channel inpainting UNet
structure; SDXL: a 4-channel UNet, blended after each step). Runs are interleaved; ratio = minunet / diffusers of the fastest runs (median in brackets;
<= 1 is the target). CUDA is used when present.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import pipes  # noqa: E402

from minunet.pipelines.image import Pipeline  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fns, repeat):
    """Interleaved runs (ours, theirs, ours, ...) so that drift in the machine's load hits both alike:
    {name: (fastest s, median s)}."""
    for fn in fns.values():  # warm-up
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {k: (min(v), sorted(v)[len(v) // 2]) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=None, help="run the rows whose label contains this text (e.g. inpaint)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.steps} steps, "
          f"{args.size}x{args.size} px, Euler, CFG on")
    image, mask = inpaint_inputs(args.size)
    rows = (("tiny SD 1.x", pipes.sd_pipeline, None, {}),
            ("tiny SDXL", pipes.sdxl_pipeline, None, {}),
            # inpainting: the 9-channel SD 1.5 inpainting structure, and SDXL's 4-channel blend
            ("SD inpaint", pipes.sd_inpaint_pipeline, None, dict(image=image, mask_image=mask)),
            ("SDXL inpaint", pipes.sdxl_pipeline, "StableDiffusionXLInpaintPipeline",
             dict(image=image, mask_image=mask)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, build, cls, extra in rows:
            if args.only is not None and args.only not in label:
                continue
            folder = Path(tmp) / label.replace(" ", "_")
            theirs = build(folder)
            if cls is not None:
                import diffusers
                theirs = getattr(diffusers, cls).from_pipe(theirs)
            theirs = theirs.to(device)
            theirs.set_progress_bar_config(disable=True)
            ours = Pipeline.from_pretrained(folder, device=device)
            kw = dict(prompt="a red fox in the snow", negative_prompt="blurry", num_inference_steps=args.steps,
                      height=args.size, width=args.size, **extra)
            t = seconds({"ours": lambda: ours(**kw, generator=torch.Generator().manual_seed(0), progress=False),
                         "theirs": lambda: theirs(**kw, generator=torch.Generator().manual_seed(0))}, args.repeat)
            (a, am), (b, bm) = t["ours"], t["theirs"]
            print(f"{label:<12} minunet {a:7.3f} s/image [{am:.3f}]   diffusers {b:7.3f} s/image [{bm:.3f}]   "
                  f"ratio {a / b:5.2f} (fastest run; median ratio {am / bm:.2f})")


def inpaint_inputs(size):
    """A random picture and a mask whose middle half is white (repainted), both size x size."""
    import numpy as np
    from PIL import Image

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 255
    return picture, Image.fromarray(mask)

if __name__ == "__main__":
    main()
