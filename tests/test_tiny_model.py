"""The shipped tiny model (weights/tiny/tiny-sd.safetensors, `Pipeline.tiny()`, `--model tiny`): a real
original-layout single file, a golden image, prompt adherence per sampler judged by tests/shapes_judge.py over
every colour x shape x background of the plain form, guidance 1 clearly worse, img2img, 4-channel inpainting and
FreeU (each stage convention)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shapes_judge import PALETTE, all_right, judge, score
from minunet import FreeU, Pipeline
from minunet.cli import main
from minunet.weights import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("circle", "square", "triangle")
# the README's first command: its prompt, seed and the default steps / sampler / guidance
README_PROMPT, README_SEED = "a red circle on a blue background", 0
GOLDEN = ROOT / "docs" / "tiny-red-circle.png"
COLOUR, BACKGROUND, SHAPE = 0.90, 0.90, 0.80  # the thresholds
STEPS = 20


def plain(c, s, b):
    return f"a {c} {s} on a {b} background"  # the plain form, word for word


COMBOS = [(c, s, b) for c in PALETTE for s in SHAPES for b in PALETTE if b != c]  # 8 x 3 x 7 = 168


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.tiny()


_IMAGES = {}


def images(pipe, freeu=None, **kw):
    """The pictures of COMBOS (one batch, seed 0); each setting is generated once per test session (`freeu`: the
    preset the caller has switched on, part of the key only)."""
    key = (freeu, *sorted(kw.items()))
    if key not in _IMAGES:
        _IMAGES[key] = pipe([plain(*x) for x in COMBOS], generator=torch.Generator().manual_seed(0),
                            output_type="pt", progress=False, **kw).images
    return _IMAGES[key]


def adherence(pipe, freeu=None, **kw):
    """Fractions right over COMBOS: dict(colour=, background=, shape=)."""
    return score(images(pipe, freeu, **kw), COMBOS)


def test_shipped_file_is_an_original_single_file():
    assert TINY_MODEL.stat().st_size <= 20_000_000
    from minunet.loading.io import read_header

    roots = {k.split(".")[0] for k in read_header(TINY_MODEL)[0]}
    assert roots == {"model", "first_stage_model", "cond_stage_model"}


def test_inspect_reads_it_like_an_official_file(capsys):
    assert main(["inspect", str(TINY_MODEL)]) == 0
    out = capsys.readouterr().out
    assert "sd1 text encoders" in out and "sd1-family UNet with widths [64, 128]" in out
    assert "AutoencoderKL widths [32, 64, 64], 4 latent channels" in out


def test_golden_image(tmp_path):
    """The README's first command gives the committed picture (mean |difference| <= 1 of 255, max <= 16)."""
    out = tmp_path / "golden.png"
    assert main(["generate", README_PROMPT, "--seed", str(README_SEED), "--out", str(out)]) == 0
    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    want = np.asarray(Image.open(GOLDEN).convert("RGB"), dtype=np.float32)
    assert got.shape == want.shape == (32, 32, 3)
    diff = np.abs(got - want)
    assert diff.mean() <= 1.0 and diff.max() <= 16, (diff.mean(), diff.max())
    assert judge(torch.from_numpy(got).permute(2, 0, 1) / 255) == {**judge(torch.from_numpy(want).permute(2, 0, 1)
                                                                              / 255)}


# Measured on the shipped file (README), at its default guidance 3: colour 100%, background 100%, shape 93-95% for
# every sampler. Where the model misses a threshold the test is an expected failure, strict: it fails the suite the
# day it passes, to be turned back into a plain test.
SAMPLERS = [("euler", STEPS), ("euler_a", STEPS), ("ddim", STEPS), ("dpmpp_2m", STEPS), ("dpmpp_2m", 10)]


@pytest.mark.parametrize("sampler,steps", SAMPLERS)
def test_prompt_adherence_colour_and_background(pipe, sampler, steps):
    s = adherence(pipe, sampler=sampler, num_inference_steps=steps)
    assert s["colour"] >= COLOUR and s["background"] >= BACKGROUND, s


@pytest.mark.parametrize("sampler,steps", SAMPLERS)
def test_prompt_adherence_shape(pipe, sampler, steps):
    s = adherence(pipe, sampler=sampler, num_inference_steps=steps)
    assert s["shape"] >= SHAPE, s


def sign_test(wins, losses):
    """One-sided paired sign test: the chance of at least `wins` of the wins + losses discordant prompts going one
    way if either way were equally likely."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def test_guidance_1_scores_clearly_lower(pipe):
    """"Clearly lower", per prompt: the default guidance gets more of the 168 prompts right in all three (colour,
    background, shape) than guidance 1, the same seed, and a paired sign test over the prompts where the two
    disagree puts the chance of so large a lead, were they equally good, under 1%. (Measured: 159 vs 134, p =
    2e-6.) A margin in the summed fractions cannot tell them apart: colour and background are 99-100% at both."""
    default = all_right(images(pipe, sampler="euler", num_inference_steps=STEPS), COMBOS)
    unguided = all_right(images(pipe, sampler="euler", num_inference_steps=STEPS, guidance_scale=1.0), COMBOS)
    wins = sum(d and not u for d, u in zip(default, unguided))
    losses = sum(u and not d for d, u in zip(default, unguided))
    assert wins > losses and sign_test(wins, losses) < 0.01, (sum(default), sum(unguided), wins, losses)


def test_sign_test_is_the_binomial_tail():
    assert sign_test(3, 0) == 1 / 8 and sign_test(0, 3) == 1.0
    assert abs(sign_test(9, 1) - 11 / 1024) < 1e-12


def freeu_scores(pipe, preset):
    pipe.enable_freeu(FreeU.preset(preset))
    try:
        return adherence(pipe, sampler="euler", num_inference_steps=STEPS, freeu=preset)
    finally:
        pipe.disable_freeu()


FREEU = ["sd15", "sd15-diffusers"]  # official stage rule (version 2), diffusers' stage rule (version 1)


@pytest.mark.parametrize("preset", FREEU)
def test_freeu_still_adheres_colour_and_background(pipe, preset):
    s = freeu_scores(pipe, preset)
    assert s["colour"] >= COLOUR and s["background"] >= BACKGROUND, s


@pytest.mark.parametrize("preset", FREEU)
def test_freeu_still_adheres_shape(pipe, preset):
    assert freeu_scores(pipe, preset)["shape"] >= SHAPE


def drawn(colour, shape, background, cx, cy, size=0.5):
    from minunet.training.shapes import draw_plain

    return draw_plain(colour, shape, background, size_fraction=size, cx=cx, cy=cy, size=32)[None] * 0.5 + 0.5


def centre(image, background):
    """Centre (row, col) of the pixels that differ from the background colour."""
    bg = torch.tensor(PALETTE[background], dtype=torch.float32)[:, None, None] / 255
    mask = (image - bg).norm(dim=0) > 60 / 255
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())


def img2img(pipe):
    image = drawn("red", "circle", "white", 0.35, 0.6)
    out = pipe("a blue circle on a white background", image=image, strength=0.6, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(0), output_type="pt", progress=False).images[0]
    return image[0], out


def test_img2img_repaints_the_circle_blue(pipe):
    _, out = img2img(pipe)
    v = judge(out)
    assert (v["colour"], v["background"], v["shape"]) == ("blue", "white", "circle"), v


def test_img2img_keeps_the_place(pipe):
    """Over 12 seeds (0-11) the blue circle's centre stays within a quarter of the red one's width (4 px of its 16)
    in at least 10. Measured at strength 0.6: 11 of 12 within 3.1 px, median 2.4 px; seed 0 moves 7.9 px (and
    shrinks), the one miss. At 0.5: median 1.3 px; at 0.7: 3.4 px (README)."""
    image = drawn("red", "circle", "white", 0.35, 0.6)
    r0, c0 = centre(image[0], "white")
    shifts = []
    for seed in range(12):
        out = pipe("a blue circle on a white background", image=image, strength=0.6, num_inference_steps=STEPS,
                   generator=torch.Generator().manual_seed(seed), output_type="pt", progress=False).images[0]
        r1, c1 = centre(out, "white")
        shifts.append(max(abs(r1 - r0), abs(c1 - c0)))
    assert sum(s <= 4 for s in shifts) >= 10, [round(s, 1) for s in shifts]


def test_inpainting_fills_the_masked_square_and_keeps_the_rest(pipe):
    """The object under the mask is replaced by the prompt's (the data set has one object per picture, so the
    masked square holds the old one: a second object beside a kept one is not something it learned)."""
    image = drawn("yellow", "square", "black", 0.5, 0.5, size=0.4)   # a yellow square in the middle
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 6:26, 6:26] = 1                                         # repaint the middle 20 x 20
    out = pipe("a red circle on a black background", image=image, mask_image=mask, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(0), output_type="pt", progress=False).images[0]
    v = judge(out[:, 6:26, 6:26])
    assert (v["colour"], v["background"], v["shape"]) == ("red", "black", "circle"), v
    keep = mask[0, 0] == 0
    assert float((out - image[0]).abs()[:, keep].mean()) < 0.06  # the rest: the VAE round trip only


def test_generate_prompts_over_two_ranks_writes_each_image_once(tmp_path):
    prompts = [plain("red", "circle", "blue"), plain("green", "square", "white"), plain("white", "triangle", "black")]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from test_tiny_training import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "minunet", "generate", "--prompts", str(tmp_path / "prompts.txt"), "--steps", "10",
           "--out", str(tmp_path / "p.png")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("p-*.png")) == ["p-0.png", "p-1.png", "p-2.png"]
    assert done.stdout.count("wrote ") == 3
    for i, prompt in enumerate(prompts):
        params = json.loads(Image.open(tmp_path / f"p-{i}.png").text["minunet"])["settings"]
        assert params["prompt"] == prompt


def test_default_guidance_is_the_models_own(pipe):
    """Pipeline.tiny() samples at the tiny model's guidance (weights.TINY_GUIDANCE, chosen on seed 1 in the README),
    not diffusers' 7.5; an explicit guidance_scale still wins."""
    from minunet.weights import TINY_GUIDANCE

    def run(**kw):
        return pipe(README_PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="latent", progress=False, **kw).images

    assert TINY_GUIDANCE != 7.5
    assert torch.equal(run(), run(guidance_scale=TINY_GUIDANCE))
    assert not torch.allclose(run(), run(guidance_scale=7.5), atol=1e-3)
    assert Pipeline.from_single_file(TINY_MODEL).defaults()[0] == 7.5  # a file alone: diffusers' default
