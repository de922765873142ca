"""Sizes: diffusers' rule (a positive multiple of the VAE factor, 8) on the real level counts (SD 1.5: 4 levels,
SDXL: 3), small sizes that halve to odd latents and to 1 x 1 equal diffusers; a size that cannot fit the
machine's memory is refused up front with a named error saying what it would need."""
import pytest
import torch

import pipes
from minunet import Pipeline, UNetConfig


def vae8(seed=0, scaling=0.18215, upcast=False):
    """A tiny AutoencoderKL with the real factor 8 (four levels)."""
    from diffusers import AutoencoderKL

    from helpers import randomize_
    vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        scaling_factor=scaling, force_upcast=upcast).eval()
    return randomize_(vae, seed)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """(folder, Pipeline) of the SD 1.5 structure (4 levels, attention on the first three) at small widths,
    in 4 and 9 (inpainting) input channels."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    out = {}
    for channels, cls in ((4, StableDiffusionPipeline), (9, StableDiffusionInpaintPipeline)):
        folder = tmp_path_factory.mktemp(f"sd15-{channels}")
        cfg = UNetConfig(block_out_channels=(32, 64, 64, 64), num_heads=(2, 2, 2, 2), context_dim=32,
                         norm_num_groups=8, in_channels=channels, layers_per_block=1)
        cls(vae=vae8(), text_encoder=pipes.text_encoder(32, 2, seed=1), tokenizer=pipes.tokenizer(folder / "tok"),
            unet=pipes.unet(cfg, 2), scheduler=EulerDiscreteScheduler.from_pretrained(pipes.SD_SCHEDULER.parent),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
        out[channels] = folder, Pipeline.from_pretrained(folder)
    return out


KW = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=2)


@pytest.mark.parametrize("height, width", [(48, 48), (8, 8), (40, 56)])
def test_sd15_structure_small_sizes_equal_diffusers(sd15, height, width):
    """48 px: latents 6 -> 3 -> 2 -> 1; 8 px: a 1 x 1 latent through every level (was: 'at least 64')."""
    folder, ours = sd15[4]
    theirs = pipes.diffusers_pipe("StableDiffusionPipeline", folder, safety_checker=None,
                                  requires_safety_checker=False)
    kw = dict(KW, height=height, width=width)
    images = pipes.check(lambda **o: ours(**kw, **o, generator=pipes.gen()),
                         lambda **o: theirs(**kw, **o, generator=pipes.gen()))
    assert images.shape == (1, 3, height, width)


def test_sd15_inpainting_48px_equals_diffusers(sd15):
    folder, ours = sd15[9]
    theirs = pipes.diffusers_pipe("StableDiffusionInpaintPipeline", folder, safety_checker=None,
                                  requires_safety_checker=False)
    g = torch.Generator().manual_seed(5)
    image, mask = torch.rand(1, 3, 48, 48, generator=g), (torch.rand(1, 1, 48, 48, generator=g) > 0.5).float()
    kw = dict(KW, height=48, width=48, image=image, mask_image=mask)
    pipes.check(lambda **o: ours(**kw, **o, generator=pipes.gen()), lambda **o: theirs(**kw, **o, generator=pipes.gen()))


def test_sdxl_structure_small_size_equals_diffusers(tmp_path):
    """SDXL's three levels (no attention at the first) and its VAE factor 8: 24 x 40 -> latents 3 x 5 -> 2 x 3 -> 1 x 2
    (was: 'at least 32')."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    cfg = UNetConfig(block_out_channels=(32, 64, 64), attention_levels=(False, True, True), transformer_depth=(0, 1, 1),
                     transformer_depth_mid=1, num_heads=(2, 2, 2), context_dim=32 + 64, use_linear_projection=True,
                     adm_in_channels=32 + 6 * 256, norm_num_groups=8, layers_per_block=1)
    StableDiffusionXLPipeline(
        vae=vae8(scaling=0.13025, upcast=True), text_encoder=pipes.text_encoder(32, 2, seed=3),
        text_encoder_2=pipes.text_encoder(64, 2, projection=32, seed=1, act="gelu"),
        tokenizer=pipes.tokenizer(tmp_path / "tok"),
        tokenizer_2=pipes.tokenizer(tmp_path / "tok2", "stable-diffusion-xl-base-1.0", "tokenizer_2"),
        unet=pipes.unet(cfg, 2), scheduler=EulerDiscreteScheduler.from_pretrained(pipes.XL_SCHEDULER.parent),
    ).save_pretrained(tmp_path / "xl")
    ours = Pipeline.from_pretrained(tmp_path / "xl")
    theirs = pipes.diffusers_pipe("StableDiffusionXLPipeline", tmp_path / "xl")
    kw = dict(KW, height=24, width=40)
    pipes.check(lambda **o: ours(**kw, **o, generator=pipes.gen()), lambda **o: theirs(**kw, **o, generator=pipes.gen()))


def test_bad_and_huge_sizes_are_refused_up_front(sd15):
    from minunet.pipelines.checks import TooLargeError

    _, ours = sd15[4]
    for value in (0, -8, 44):
        with pytest.raises(ValueError, match=f"height={value} must be a positive multiple of 8"):
            ours("x", height=value, num_inference_steps=1, progress=False)
    calls = []
    ours.text.encode, original = (lambda *a, **k: calls.append(1)), ours.text.encode  # nothing may run
    try:
        for h, w in ((2**20, 512), (100000, 100000)):
            with pytest.raises(TooLargeError, match=rf"height={h}, width={w} \(batch 1\): .* would need about "
                                                    r"[\d,]+ GiB, more than the [\d,]+ GiB of cpu"):
                ours("x", height=h, width=w, num_inference_steps=1, progress=False)
    finally:
        ours.text.encode = original
    assert calls == []


# ---- the x2 latent upscaler --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upscalers(tmp_path_factory):
    """(diffusers, minunet) StableDiffusionLatentUpscalePipeline / UpscalePipeline on the same tiny K-UNet, with the
    tests' VAE of factor 2 and with a VAE of the real factor 8."""
    from diffusers import StableDiffusionLatentUpscalePipeline

    from minunet import UpscalePipeline
    out = {}
    for factor in (2, 8):
        folder = tmp_path_factory.mktemp(f"up{factor}")
        theirs = pipes.latent_upscaler_pipeline(folder)
        if factor == 8:
            theirs.vae = vae8()
            theirs.save_pretrained(folder)
            theirs = StableDiffusionLatentUpscalePipeline.from_pretrained(folder)
        theirs.set_progress_bar_config(disable=True)
        out[factor] = theirs, UpscalePipeline.from_pretrained(folder)
    return out


UP = dict(prompt="a fox", num_inference_steps=3, guidance_scale=9.0)


def test_upscaler_small_image_equals_diffusers(upscalers):
    """The issue's input, 1 x 3 x 32 x 48 in [0, 1], 3 steps, guidance 9: the same K-UNet sizes as diffusers
    (latents 16 x 24 -> 32 x 48 through 32 x 48 ... 4 x 6), latents within 1e-4, image within 1e-3."""
    theirs, ours = upscalers[2]
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    pipes.check(lambda **o: ours(**UP, image=image, **o, generator=pipes.gen()),
                lambda **o: theirs(**UP, image=image, **o, generator=pipes.gen()))


def test_upscaler_image_too_small_for_the_kernels_is_named_before_work(upscalers):
    """With the real VAE factor 8 the same image is 4 x 6 latents: the K-UNet would reach 1 x 1 at its lowest level,
    where the reflect padding of its fixed kernels cannot run. diffusers dies there in torch ('Padding size should be
    less than the corresponding input dimension'); minunet names the size and the smallest it takes, before any
    text encoder, VAE or UNet call."""
    theirs, ours = upscalers[8]
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="Padding size should be less than"):
        theirs(**UP, image=image, generator=pipes.gen())
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (ours.unet, ours.text_encoder)]
    try:
        with pytest.raises(ValueError, match=r"image 32x48 \(height x width\): .* multiples of 32 and at least 64"):
            ours(**UP, image=image, generator=pipes.gen(), progress=False)
        assert calls == []  # refused before the text encoder and the UNet
        ok = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
        pipes.check(lambda **o: ours(**UP, image=ok, **o, generator=pipes.gen()),
                    lambda **o: theirs(**UP, image=ok, **o, generator=pipes.gen()))
    finally:
        for h in hooks:
            h.remove()
