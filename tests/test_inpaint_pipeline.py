"""Inpainting end to end: minunet's Pipeline against StableDiffusion[XL]InpaintPipeline on tiny random models saved
in the diffusers layout (9-channel SD 1.5 inpainting structure, 4-channel SD 1.5, SDXL base and refiner), Euler and
DDIM. Latents within 1e-4 relative, images within 1e-3 (PIL outputs with padding_mask_crop: equal bytes, at most
one level off)."""
import numpy as np
import pytest
import torch
from PIL import Image

import pipes
from helpers import assert_close
from minunet import inpaint
from minunet.pipeline import Pipeline

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler"}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def diffusers_pipe(cls_name, folder, sampler="euler", **kw):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(folder, **kw)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(ours_fn, theirs_fn):
    """Same call through both: latents within 1e-4 of their scale, decoded images ([0, 1]) within 1e-3."""
    a = ours_fn(output_type="latent", progress=False).images
    b = theirs_fn(output_type="latent").images
    assert_close(a, b, rel=1e-4, msg="latents")
    a = ours_fn(output_type="pt", progress=False).images
    b = theirs_fn(output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)
    return a


def check_pil(ours_fn, theirs_fn):
    a = np.stack([np.asarray(i, dtype=np.int16) for i in ours_fn(progress=False).images])
    b = np.stack([np.asarray(i, dtype=np.int16) for i in theirs_fn().images])
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    return a


def picture(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def mask_picture(w, h, box, soft=0):
    arr = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    im = Image.fromarray(arr)
    return inpaint.blur(im, soft) if soft else im


@pytest.fixture(scope="module")
def sd9(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd9")
    pipes.sd_inpaint_pipeline(folder)
    return folder, Pipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def sd4(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd4")
    pipes.sd_pipeline(folder)
    return folder, Pipeline.from_pretrained(folder)


SD_KW = dict(safety_checker=None, requires_safety_checker=False)


@pytest.mark.parametrize("fixture", ["sd9", "sd4"])
@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_sd_inpainting(fixture, sampler, strength, request):
    folder, ours = request.getfixturevalue(fixture)
    theirs = diffusers_pipe("StableDiffusionInpaintPipeline", folder, sampler, **SD_KW)
    image, mask = picture(40, 56, 1), mask_picture(40, 56, (8, 10, 30, 40))
    kw = dict(prompt=["a cat on a bench", "a dog"], negative_prompt=["blurry", "dark"], image=image,
              mask_image=mask, strength=strength, num_inference_steps=6, height=48, width=32)
    eta = {"eta": 0.3} if sampler == "ddim" else {}
    check(lambda **o: ours(**kw, **o, **eta, sampler=sampler, generator=gen()),
          lambda **o: theirs(**kw, **o, **eta, generator=gen()))
