"""The shipped tiny video model's scores (README, "The tiny video model"): over the plain-form prompts of a colour x
shape x direction grid, the fraction of clips whose object's centroid moves the prompted way, whose colour and
background are right and that hold one object in every frame, judged by tests/shapes_judge.py, with the seconds
each run took.

    python benchmarks/tiny_video.py                      # the tests' 12 clips, DDIM 10 / 20 steps, FreeU, Euler
    python benchmarks/tiny_video.py --full --threads 2   # all 48: 4 colour pairs x 3 shapes x 4 directions
    python benchmarks/tiny_video.py --grid docs/tiny-video-grid.png   # and the frames of the first run, a row a clip
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shapes_judge import score_clips  # noqa: E402
from test_tiny_video import DIRECTIONS, GRID, PAIRS, SHAPES, plain  # noqa: E402
from minunet import FreeU, VideoPipeline  # noqa: E402

FULL = [(c, s, d, b) for c, b in PAIRS for s in SHAPES for d in DIRECTIONS]
RUNS = [("ddim", 10, None), ("ddim", 20, None), ("ddim", 10, "video"), ("euler", 10, None)]  # the first: the default


def run(pipe, grid, sampler, steps, freeu):
    if freeu is not None:
        pipe.enable_freeu(FreeU.preset(freeu))
    start = time.perf_counter()
    try:
        clips = pipe([plain(*x) for x in grid], num_inference_steps=steps, sampler=sampler, output_type="pt",
                     generator=torch.Generator().manual_seed(0), progress=False).frames
    finally:
        pipe.disable_freeu()
    return clips, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the 48-clip product instead of the tests' 12 clips")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default=None, help="write the first run's frames here (PNG, a row a clip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe, grid = VideoPipeline.tiny(), FULL if args.full else GRID
    for i, (sampler, steps, freeu) in enumerate(RUNS):
        clips, seconds = run(pipe, grid, sampler, steps, freeu)
        s = score_clips(clips, grid)
        print(f"{len(grid)} clips, {sampler} {steps} steps, FreeU {freeu}: " + ", ".join(
            f"{k} {v:.0%}" for k, v in s.items()) + f" ({seconds:.1f} s, {args.threads} thread(s))", flush=True)
        if i == 0 and args.grid is not None:
            from minunet.training.tiny import save_grid
            save_grid(clips.flatten(0, 1) * 2 - 1, clips.shape[1], args.grid)


if __name__ == "__main__":
    main()
