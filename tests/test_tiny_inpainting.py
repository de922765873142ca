"""The shipped tiny inpainting model (weights/tiny/tiny-inpainting.safetensors, `Pipeline.tiny_inpainting()`,
`--model tiny-inpainting`): a real 9-channel original-layout single file on the image model's VAE and text encoder;
a hole is filled with the prompt's colour and shape (judged by tests/shapes_judge.py over every colour x shape x
background of the plain form), in a plain picture and over an object of another colour and shape, and the
pixels outside the hole stay within a stated distance of the input; the image model's 4-channel blend is run on
the same grid for comparison (README)."""
import numpy as np
import pytest
import torch
from PIL import Image

from shapes_judge import PALETTE, judge
from minunet import Pipeline
from minunet.cli import main
from minunet.weights import TINY_INPAINTING, TINY_MODEL

SHAPES = ("circle", "square", "triangle")
COMBOS = [(c, s, b) for c in PALETTE for s in SHAPES for b in PALETTE if b != c]  # 8 x 3 x 7 = 168
FILLED = 0.85       # the bar: the hole holds the prompt's colour and shape
OUTSIDE = 8.0       # stated bound: mean |output - input| outside the hole, 0..255 (the VAE round trip is part of it)
HOLE = (4, 28, 4, 28)  # rows, columns [4, 28): a centred 24 x 24 square, whole 4 x 4 latent cells
STEPS = 20


def plain(c, s, b):
    return f"a {c} {s} on a {b} background"


def other(options, *avoid):
    return next(o for o in options if o not in avoid)


def pictures(scene):
    """(168, 3, 32, 32) in [0, 1]: 'plain': the background alone; 'replace': an object of another colour and shape
    than the prompt's, half the picture wide, in the middle of the hole."""
    from minunet.training.shapes import draw_plain

    out = []
    for c, s, b in COMBOS:
        old_colour = other(PALETTE, c, b) if scene == "replace" else b
        old_shape = SHAPES[(SHAPES.index(s) + 1) % 3]
        out.append(draw_plain(old_colour, old_shape, b, size_fraction=0.5, size=32))
    return torch.stack(out) * 0.5 + 0.5


def hole_mask():
    m = torch.zeros(1, 1, 32, 32)
    m[..., HOLE[0]:HOLE[1], HOLE[2]:HOLE[3]] = 1
    return m


_RUNS = {}


def inpainted(pipe, name, scene):
    """The grid's outputs (one batch, seed 0, Euler 20 steps, guidance 7.5), once per test session."""
    if (name, scene) not in _RUNS:
        images = pictures(scene)
        _RUNS[name, scene] = images, pipe([plain(*x) for x in COMBOS], image=images,
                                          mask_image=hole_mask().expand(len(COMBOS), -1, -1, -1),
                                          num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                                          output_type="pt", progress=False).images
    return _RUNS[name, scene]


def scores(images, out):
    """Fractions of the grid whose hole holds the prompt's colour, shape, both; mean |out - in| outside it (0..255)."""
    y0, y1, x0, x1 = HOLE
    verdicts = [judge(o[:, y0:y1, x0:x1]) for o in out]
    colour = [v["colour"] == c for v, (c, _, _) in zip(verdicts, COMBOS)]
    shape = [v["shape"] == s for v, (_, s, _) in zip(verdicts, COMBOS)]
    keep = hole_mask()[0, 0] == 0
    return {"colour": float(np.mean(colour)), "shape": float(np.mean(shape)),
            "filled": float(np.mean([a and b for a, b in zip(colour, shape)])),
            "outside": float((out - images).abs()[:, :, keep].mean() * 255)}


@pytest.fixture(scope="module")
def pipes():
    return {"9-channel": Pipeline.tiny_inpainting(), "4-channel blend": Pipeline.tiny()}


def test_shipped_file_is_a_9_channel_single_file_on_the_image_models_vae_and_text():
    from minunet.loading.io import load_safetensors

    assert TINY_INPAINTING.stat().st_size <= 17_000_000
    ours, image_model = load_safetensors(TINY_INPAINTING), load_safetensors(TINY_MODEL)
    assert {k.split(".")[0] for k in ours} == {"model", "first_stage_model", "cond_stage_model"}
    assert ours["model.diffusion_model.input_blocks.0.0.weight"].shape == (64, 9, 3, 3)
    assert ours["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    frozen = [k for k in image_model if not k.startswith("model.")]
    assert ours.keys() == image_model.keys() and all(torch.equal(ours[k], image_model[k]) for k in frozen)


@pytest.mark.parametrize("scene", ["plain", "replace"])
def test_the_hole_holds_the_prompts_colour_and_shape(pipes, scene):
    s = scores(*inpainted(pipes["9-channel"], "9-channel", scene))
    assert s["filled"] >= FILLED, s


@pytest.mark.parametrize("scene", ["plain", "replace"])
def test_outside_the_hole_the_picture_is_kept(pipes, scene):
    s = scores(*inpainted(pipes["9-channel"], "9-channel", scene))
    assert s["outside"] <= OUTSIDE, s


@pytest.mark.parametrize("scene", ["plain", "replace"])
def test_the_9_channel_model_fills_better_than_the_image_models_blend(pipes, scene):
    ours = scores(*inpainted(pipes["9-channel"], "9-channel", scene))
    blend = scores(*inpainted(pipes["4-channel blend"], "4-channel blend", scene))
    assert ours["filled"] > blend["filled"], (ours, blend)


def test_cli_inpaints_with_the_shipped_model(tmp_path, pipes):
    """`--model tiny-inpainting --image --mask` gives the API's picture (same PIL inputs, seed, steps; float32)."""
    image = pictures("plain")[COMBOS.index(("red", "circle", "blue"))]
    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    mask = Image.fromarray((hole_mask()[0, 0].numpy() * 255).astype(np.uint8))
    picture.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["generate", plain("red", "circle", "blue"), "--model", "tiny-inpainting", "--image",
                 str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--steps", str(STEPS),
                 "--out", str(out)]) == 0
    want = pipes["9-channel"](plain("red", "circle", "blue"), image=picture, mask_image=mask,
                              num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                              progress=False).images[0]
    diff = np.abs(np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) - np.asarray(want, dtype=np.float32))
    assert diff.max() <= 1, diff.max()
