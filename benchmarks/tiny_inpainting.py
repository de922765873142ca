"""The shipped tiny inpainting model's figures for the README: how often the hole holds the prompt's colour and
shape, and how far the kept pixels move, for the 9-channel model and the image model's 4-channel blend, per scene
and sampler; seconds per image; and the picture docs/tiny-inpainting.png.

    python benchmarks/tiny_inpainting.py [--model FILE] [--docs docs] [--threads 1]

The holes and the judge are the tests' (tests/test_tiny_inpainting.py): every colour x shape x background of the
plain form (168 prompts) per hole (a centred 24 x 24 one and a 20 x 20 one in the top left corner of a 32 px
picture of the background), one batch, seed 0, the default guidance (3, weights.TINY_GUIDANCE).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_tiny_inpainting import GRID, HOLES, hole_mask, inpaint, scores  # noqa: E402

from minunet import Pipeline  # noqa: E402
from minunet.weights import TINY_GUIDANCE  # noqa: E402
from minunet.training import tiny  # noqa: E402

COMBOS = GRID  # the tests' grid: every colour x shape x background of the plain form, 8 x 3 x 7 = 168
SAMPLERS = [("euler", 20), ("dpmpp_2m", 20)]
SHOWN = [("red", "circle", "blue"), ("yellow", "square", "black"), ("green", "triangle", "white"),
         ("white", "circle", "purple"), ("blue", "triangle", "yellow"), ("orange", "square", "green")]


def table(pipes):
    rows = ["| model | hole | sampler | colour | shape | both (filled) | outside the hole: mean abs. diff. (0..255) |",
            "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for name, pipe in pipes.items():
        for hole in HOLES:
            for sampler, steps in (SAMPLERS if name == "9-channel" else SAMPLERS[:1]):
                s = scores(hole, COMBOS, *inpaint(pipe, hole, COMBOS, sampler=sampler, num_inference_steps=steps))
                rows.append(f"| {name} | {hole} | {sampler}, {steps} steps | {s['colour']:.0%} | {s['shape']:.0%} | "
                            f"{s['filled']:.0%} | {s['outside']:.2f} |")
                print(rows[-1], flush=True)
    return rows


def picture(pipes, path):
    """Rows: the input with its hole grey, the 9-channel model's filling, the 4-channel blend's; the centre hole
    left, the corner hole right."""
    outs, shown = [], []
    for hole in HOLES:
        images, out = zip(*[inpaint(p, hole, SHOWN) for p in pipes.values()])
        mask = hole_mask(hole)
        shown.append(images[0] * (1 - mask) + 0.5 * mask)
        outs.append(out)
    rows = [torch.cat(shown)] + [torch.cat([o[i] for o in outs]) for i in range(len(pipes))]
    tiny.save_grid(torch.cat(rows) * 2 - 1, 2 * len(SHOWN), path, scale=4)


def seconds_per_image(pipe, n=5):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        inpaint(pipe, "centre", COMBOS[:1], num_inference_steps=30)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="a 9-channel single file (default: the shipped one)")
    p.add_argument("--docs", default=None, help="write tiny-inpainting.png into this folder")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nine = Pipeline.tiny_inpainting() if args.model is None else Pipeline.from_pipe(
        Pipeline.from_single_file(args.model), default_size=32, default_guidance=TINY_GUIDANCE)
    pipes = {"9-channel": nine, "4-channel blend": Pipeline.tiny()}
    table(pipes)
    print(f"seconds per image (30 Euler steps, guidance {nine.default_guidance:g}, {args.threads} thread(s), median "
          f"of 5): {seconds_per_image(nine):.2f}")
    if args.docs is not None:
        picture(pipes, Path(args.docs) / "tiny-inpainting.png")


if __name__ == "__main__":
    main()
