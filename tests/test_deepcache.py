"""DeepCache (minunet.models.deepcache) against the DeepCache package's DeepCacheSDHelper (uniform skip mode) on diffusers'
models holding the same weights: every branch of the tiny SD 1.5 and SDXL structures and of the video UNet, step
by step (outputs within 1e-5 of their scale), and whole runs of the text-to-image, img2img, refiner and inpainting
pipelines (latents within 1e-4, images within 1e-3). cache_interval=1 and disabling are bit-identical to no cache."""
from types import SimpleNamespace

import pytest
import torch

import pipes
from helpers import TINY, assert_close, diffusers_kwargs, diffusers_unet, randomize_, unet_inputs
from minunet import UNet
from minunet.models.deepcache import DeepCache, disable_deepcache, enable_deepcache
from minunet.pipelines.image import Pipeline
from minunet.models.video import VideoUNet
from pipes import check, diffusers_pipe, gen

TIMESTEPS = torch.tensor([999.0, 857.0, 714.0, 571.0, 428.0, 285.0, 142.0])  # 7 steps: full at 0, 3, 6 (N = 3)
SD_KW = dict(safety_checker=None, requires_safety_checker=False)


def helper_on(ref, interval, branch, timesteps=TIMESTEPS):
    """DeepCacheSDHelper on a diffusers model; a stand-in pipeline holds what it reads (unet, scheduler.timesteps)."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=ref, scheduler=SimpleNamespace(timesteps=timesteps)))
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    return helper


def image_steps(cfg):
    """Inputs of 7 sampler steps: new latents at every step, as a sampler gives; one timestep each."""
    return [(x, t, ctx, kw) for i, t in enumerate(TIMESTEPS) for x, _, ctx, kw in [unet_inputs(cfg, seed=i)]]


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_every_branch_equals_the_helper_step_by_step(name):
    cfg = TINY[name]
    ours = randomize_(UNet(cfg).eval(), 0)
    ref = diffusers_unet(ours)
    steps = image_steps(cfg)
    with torch.no_grad():
        plain = [ours(x, t, ctx, **kw) for x, t, ctx, kw in steps]
        for branch in range(3 * len(cfg.block_out_channels)):
            helper = helper_on(ref, 3, branch)
            cache = enable_deepcache(ours, 3, branch)
            for i, (x, t, ctx, kw) in enumerate(steps):
                out = ours(x, t, ctx, **kw)
                assert_close(out, ref(x, t, ctx, **diffusers_kwargs(kw)).sample, msg=f"branch {branch}, step {i}")
                if i % 3 == 0:   # a full step is the plain forward, bit for bit
                    assert torch.equal(out, plain[i])
                else:            # a cached one is not
                    assert (out - plain[i]).abs().max() > 1e-3 * plain[i].abs().max()
            helper.disable()
            assert cache.step == len(steps)
    disable_deepcache(ours)


def test_video_unet_every_branch_equals_the_helper():
    """The helper keeps the outputs of resnets and spatial transformers; the temporal layers after them then see
    the kept values again and give what they gave on the full step: the same meaning as minunet's one tensor."""
    from test_video import TINY as VIDEO, diffusers_video_unet, inputs

    ours = randomize_(VideoUNet(VIDEO).eval(), seed=3)
    ref = diffusers_video_unet(VIDEO, ours.state_dict())
    steps = [(x, t, ctx) for i, t in enumerate(TIMESTEPS[:4]) for x, _, ctx in [inputs(seed=i)]]
    with torch.no_grad():
        plain = ours(*steps[1])
        for branch in (0, 2, 4, 9):
            helper = helper_on(ref, 2, branch)
            enable_deepcache(ours, 2, branch)
            for i, (x, t, ctx) in enumerate(steps):
                out = ours(x, t, ctx)
                assert_close(out, ref(x, t, ctx).sample, msg=f"branch {branch}, step {i}")
                if i == 1:  # a cached step
                    assert (out - plain).abs().max() > 1e-3 * plain.abs().max()
            helper.disable()
    disable_deepcache(ours)


@pytest.mark.parametrize("branch", [0, 4, 11])
def test_interval_one_and_disable_are_bit_identical(branch):
    cfg = TINY["sd15"]
    ours = randomize_(UNet(cfg).eval(), 0)
    steps = image_steps(cfg)[:4]
    with torch.no_grad():
        plain = [ours(x, t, ctx, **kw) for x, t, ctx, kw in steps]
        enable_deepcache(ours, 1, branch)
        assert all(torch.equal(ours(x, t, ctx, **kw), p) for (x, t, ctx, kw), p in zip(steps, plain))
        enable_deepcache(ours, 2, branch)
        assert not torch.equal([ours(x, t, ctx, **kw) for x, t, ctx, kw in steps][1], plain[1])
        disable_deepcache(ours)
        assert ours.deepcache is None
        assert all(torch.equal(ours(x, t, ctx, **kw), p) for (x, t, ctx, kw), p in zip(steps, plain))


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("interval,branch", [(3, 0), (2, 4)])
def test_text_to_image_equals_diffusers_with_the_helper(sd, sampler, interval, branch):
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, sampler, **SD_KW)
    kw = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=7, height=48, width=32)
    helper = helper_on(theirs.unet, interval, branch, theirs.scheduler.timesteps)
    helper.pipe = theirs     # the helper reads the timesteps the pipeline sets at each call
    ours.enable_deepcache(interval, branch)
    try:
        check(lambda **o: ours(**kw, **o, sampler=sampler, generator=gen()),
              lambda **o: theirs(**kw, **o, generator=gen()))
    finally:
        ours.disable_deepcache()
        helper.disable()


def pipeline_case(case, sd, sdxl, tmp_path):
    """(ours, theirs, call arguments) of an img2img, refiner or inpainting run."""
    image = torch.rand(1, 3, 48, 32, generator=gen(3))
    if case == "img2img":
        return sd[1], diffusers_pipe("StableDiffusionImg2ImgPipeline", sd[0], **SD_KW), dict(
            prompt="a cat", image=image, strength=0.7, num_inference_steps=9)
    if case == "refiner":
        latents = torch.randn(1, 4, 6, 8, generator=gen(5))
        return sdxl[3], diffusers_pipe("StableDiffusionXLImg2ImgPipeline", sdxl[1]), dict(
            prompt="a lighthouse", image=latents, num_inference_steps=9, denoising_start=0.5)
    pipes.sd_inpaint_pipeline(tmp_path)
    mask = torch.zeros(1, 1, 48, 32)
    mask[..., 8:30, 4:20] = 1
    return Pipeline.from_pretrained(tmp_path), diffusers_pipe("StableDiffusionInpaintPipeline", tmp_path, **SD_KW), \
        dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=6, height=48, width=32)


@pytest.mark.parametrize("case", ["img2img", "refiner", "inpainting"])
def test_img2img_refiner_inpainting_equal_diffusers_with_the_helper(case, sd, sdxl, tmp_path):
    """Runs that start part-way (img2img, refiner) count steps from their first one, as the helper does."""
    ours, theirs, kw = pipeline_case(case, sd, sdxl, tmp_path)
    helper = helper_on(theirs.unet, 3, 1)
    helper.pipe = theirs
    ours.enable_deepcache(3, 1)
    try:
        check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))
    finally:
        ours.disable_deepcache()
        helper.disable()


def test_a_new_run_starts_with_a_full_step(sd):
    """The pipeline restarts the count: a second run is the first one again, not a continuation."""
    _, ours = sd
    ours.enable_deepcache(3, 0)
    kw = dict(prompt="a red fox", num_inference_steps=4, height=32, width=32, output_type="latent", progress=False)
    try:
        a = ours(**kw, generator=gen()).images
        b = ours(**kw, generator=gen()).images
    finally:
        ours.disable_deepcache()
    assert torch.equal(a, b)


def test_bad_settings_are_clear_errors():
    unet = UNet(TINY["sdxl"])  # 3 levels: branches 0 .. 8
    with pytest.raises(ValueError, match=r"cache_branch_id=9 is level 3, unit 0; this UNet has 3 levels of 2 "
                                         r"layers: use 0 \.\. 8"):
        enable_deepcache(unet, 3, 9)
    for bad in (dict(cache_interval=0), dict(cache_interval=2.5), dict(cache_branch_id=-1), dict(cache_interval=True)):
        with pytest.raises(ValueError, match=f"DeepCache: {next(iter(bad))} must be an integer"):
            DeepCache(**bad)
    assert unet.deepcache is None  # nothing was attached
