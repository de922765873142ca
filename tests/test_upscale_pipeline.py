"""UpscalePipeline against diffusers' StableDiffusionLatentUpscalePipeline on a tiny pipeline saved in the diffusers
layout (real CLIP tokenizer, tiny text encoder, VAE and K-UNet), latents in and an image in, and the whole
SD -> upscaler chain; bad input."""
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import pipes
from helpers import assert_close
from minunet import Pipeline
from minunet.pipelines.upscale import UpscalePipeline

STEPS = 8


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upscaler")
    theirs = pipes.latent_upscaler_pipeline(folder)
    theirs.set_progress_bar_config(disable=True)
    return UpscalePipeline.from_pretrained(folder), theirs


def low_res_latents(batch=2, h=8, w=12, seed=5):
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed))


def rel_close(actual, expected, rel):
    """Within `rel` of the largest magnitude of `expected`."""
    assert_close(actual, expected, rel=rel)


@pytest.mark.parametrize("guidance", [0.0, 9.0])
def test_latents_in_matches_diffusers(upscalers, guidance):
    ours, theirs = upscalers
    kw = dict(prompt=["a red fox", "a lighthouse at dusk"], image=low_res_latents(), num_inference_steps=STEPS,
              guidance_scale=guidance, negative_prompt=None if guidance == 0 else ["blurry", "dark"])
    expected = theirs(**kw, generator=torch.Generator().manual_seed(0), output_type="latent").images
    got = ours(**kw, generator=torch.Generator().manual_seed(0), output_type="latent", progress=False).images
    assert got.shape == (2, 4, 16, 24)
    rel_close(got, expected, 1e-4)
    image = ours(**kw, generator=torch.Generator().manual_seed(0), output_type="pt", progress=False).images
    ref = theirs(**kw, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (2, 3, 32, 48)
    rel_close(image, ref, 1e-3)


@pytest.mark.parametrize("guidance", [0.0, 9.0])
def test_image_in_matches_diffusers(upscalers, guidance):
    """A PIL image is VAE-encoded and sampled with the generator before the noise is drawn, as in diffusers."""
    ours, theirs = upscalers
    pixels = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    kw = dict(prompt="a red fox", image=Image.fromarray(pixels), num_inference_steps=STEPS, guidance_scale=guidance)
    expected = theirs(**kw, generator=torch.Generator().manual_seed(1), output_type="latent").images
    got = ours(**kw, generator=torch.Generator().manual_seed(1), output_type="latent", progress=False).images
    assert got.shape == (1, 4, 32, 48)
    rel_close(got, expected, 1e-4)
    image = ours(**kw, generator=torch.Generator().manual_seed(1), progress=False).images[0]
    ref = theirs(**kw, generator=torch.Generator().manual_seed(1)).images[0]
    assert image.size == ref.size == (96, 64)
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(ref, dtype=np.int16))
    assert diff.max() <= 1  # 8-bit pixels: within one level (a 1e-3 difference can cross a rounding boundary)


def test_sd_to_upscaler_chain_matches_diffusers(upscalers, tmp_path):
    """Pipeline(output_type="latent") -> UpscalePipeline(image=latents), one generator through both, as the API
    page's example: equal to diffusers' chain."""
    ours_up, theirs_up = upscalers
    theirs_sd = pipes.sd_pipeline(tmp_path / "sd")
    theirs_sd.set_progress_bar_config(disable=True)
    ours_sd = Pipeline.from_pretrained(tmp_path / "sd")
    prompt, size = "an astronaut, high resolution", dict(height=16, width=24)

    g = torch.Generator().manual_seed(33)
    low = theirs_sd(prompt, num_inference_steps=STEPS, generator=g, output_type="latent", **size).images
    expected = theirs_up(prompt=prompt, image=low, num_inference_steps=STEPS, guidance_scale=0, generator=g,
                         output_type="pt").images
    g = torch.Generator().manual_seed(33)
    low_ours = ours_sd(prompt, num_inference_steps=STEPS, generator=g, output_type="latent", progress=False,
                       **size).images
    got = ours_up(prompt, image=low_ours, num_inference_steps=STEPS, guidance_scale=0, generator=g,
                  output_type="pt", progress=False).images
    rel_close(low_ours, low, 1e-4)
    assert got.shape == (1, 3, 32, 48)
    rel_close(got, expected, 1e-3)


def test_defaults_are_diffusers_defaults():
    from diffusers import StableDiffusionLatentUpscalePipeline

    theirs = inspect.signature(StableDiffusionLatentUpscalePipeline.__call__).parameters
    ours = inspect.signature(UpscalePipeline.__call__).parameters
    for name in ("num_inference_steps", "guidance_scale", "negative_prompt", "generator", "latents", "output_type"):
        assert ours[name].default == theirs[name].default, name
    assert ours["num_inference_steps"].default == 75 and ours["guidance_scale"].default == 9.0


def test_progress_bar_and_callback(upscalers, capsys):
    ours, _ = upscalers
    seen = []
    ours("x", low_res_latents(1), num_inference_steps=3, guidance_scale=0, output_type="latent",
         callback=lambda i, t, x: seen.append((i, float(t), x.shape)))
    assert [i for i, _, _ in seen] == [0, 1, 2] and seen[0][2] == (1, 4, 16, 24)
    assert seen[0][1] == 999.0 and seen[1][1] > seen[2][1] == 0.0  # the schedule's timesteps, as diffusers passes
    assert "upscaling" in capsys.readouterr().err
    # a tensor the callback returns replaces the latents (the sampling path's rule)
    out = ours("x", low_res_latents(1), num_inference_steps=2, guidance_scale=0, output_type="latent", progress=False,
               callback=lambda i, t, x: torch.full_like(x, 0.5) if i == 1 else None).images
    assert (out == 0.5).all()


@pytest.mark.parametrize("image, message", [
    (torch.zeros(1, 3 + 2, 8, 12), r"image has shape \(1, 5, 8, 12\): pass SD latents \(B, 4, h, w\)"),
    (torch.zeros(1, 3, 8, 12)[:, :, :, :, None], r"image has shape \(1, 3, 8, 12, 1\)"),
    (torch.zeros(1, 4, 10, 12), r"latents 10x12 \(height x width\).*multiples of 4 and at least 8"),
    (torch.zeros(1, 4, 4, 8), r"latents 4x8 .*multiples of 4 and at least 8"),
    (Image.new("RGB", (48, 36)), r"image 36x48 .*multiples of 8 and at least 16"),
    (torch.zeros(2, 4, 8, 12), r"image has a batch of 2 but the prompt batch has 1"),
])
def test_bad_images(upscalers, image, message):
    ours, _ = upscalers
    with pytest.raises(ValueError, match=message):
        ours("x", image, num_inference_steps=1, progress=False)


def test_three_channel_latents_are_not_taken_as_an_image_silently(upscalers):
    """A (B, 3, h, w) tensor is read as an RGB image in [0, 1] and VAE-encoded: the size rule then speaks of
    the image (so a 3-channel latent by mistake gets an error or a result of the image's size, never garbage)."""
    ours, _ = upscalers
    with pytest.raises(ValueError, match=r"image 8x12 .*multiples of 8 and at least 16"):
        ours("x", torch.rand(1, 3, 8, 12), num_inference_steps=1, progress=False)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps(upscalers, steps):
    ours, _ = upscalers
    with pytest.raises(ValueError, match=f"num_inference_steps={steps!r} must be an integer >= 1"):
        ours("x", low_res_latents(1), num_inference_steps=steps)


def test_official_schedule():
    """The official scheduler config: log-linear sigmas (N + 1, from sigma_max to sigma_min, never 0) and its
    prediction_type "original_sample" read as "sample" (diffusers' older name; the denoiser only uses the sigmas)."""
    import json

    from diffusers import EulerDiscreteScheduler

    from minunet import Schedule
    from minunet.weights import CONFIGS

    folder = CONFIGS / "sd-x2-latent-upscaler" / "scheduler"
    schedule = Schedule.from_config(json.loads((folder / "scheduler_config.json").read_text()))
    assert schedule.prediction_type == "sample" and schedule.interpolation_type == "log_linear"
    steps = schedule.steps(20, "euler")
    theirs = EulerDiscreteScheduler.from_pretrained(folder)
    theirs.set_timesteps(20)
    assert len(steps.sigmas) == 21 and len(theirs.sigmas) == 22 and float(theirs.sigmas[-1]) == 0.0
    torch.testing.assert_close(steps.sigmas, theirs.sigmas[:-1], rtol=0, atol=0)
    assert abs(float(steps.sigmas[0]) - 14.6146) < 1e-3 and abs(float(steps.sigmas[-1]) - 0.0292) < 1e-4
    assert float(steps.init_noise_sigma) == float(theirs.init_noise_sigma)
