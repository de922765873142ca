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
from minunet.pipelines import inpaint
from minunet.pipelines.image import Pipeline
from pipes import check, diffusers_pipe, gen


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


SD_KW = dict(safety_checker=None, requires_safety_checker=False)


@pytest.mark.parametrize("fixture", ["sd9", "sd"])
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


@pytest.mark.parametrize("fixture", ["sd9", "sd"])
@pytest.mark.parametrize("soft", [0, 4])
def test_sd_padding_mask_crop(fixture, soft, request):
    """Only the box around the mask is generated; the output is the original's size, and wherever the mask is
    black it is the original exactly. With a soft (blurred) mask the edge blends in the overlay only."""
    folder, ours = request.getfixturevalue(fixture)
    theirs = diffusers_pipe("StableDiffusionInpaintPipeline", folder, **SD_KW)
    image, mask = picture(72, 60, 2), mask_picture(72, 60, (30, 20, 50, 34), soft)
    kw = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=4, num_inference_steps=5, height=32,
              width=32)
    out = check_pil(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))
    assert out.shape == (1, 60, 72, 3)
    black = np.asarray(mask) == 0
    assert (out[0][black] == np.asarray(image)[black]).all()


@pytest.mark.parametrize("sampler", ["euler_a", "ddim", "dpmpp_2m"])
def test_sd_soft_mask_default_size_and_random_stream(sd, sampler):
    """A blurred mask (binarised inside the loop), no height/width (the UNet's default size, not the image's),
    and samplers that draw noise every step: the skipped masked-image encode still makes diffusers' draws."""
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionInpaintPipeline", folder, sampler, **SD_KW)
    image, mask = picture(24, 40, 3), mask_picture(24, 40, (4, 6, 18, 30), soft=3)
    kw = dict(prompt="a cat", image=image, mask_image=mask, strength=0.8, num_inference_steps=5)
    eta = {"eta": 1.0} if sampler == "ddim" else {}
    out = check(lambda **o: ours(**kw, **o, **eta, sampler=sampler, generator=gen()),
                lambda **o: theirs(**kw, **o, **eta, generator=gen()))
    assert out.shape[-2:] == (ours.default_size, ours.default_size)


def test_sd9_tensor_inputs_generator_list_and_masked_latents(sd9):
    """Tensor image and mask, two images per prompt with one generator each, and masked_image_latents given."""
    folder, ours = sd9
    theirs = diffusers_pipe("StableDiffusionInpaintPipeline", folder, **SD_KW)
    image = torch.rand(1, 3, 32, 32, generator=gen(4))
    mask = (torch.rand(1, 1, 32, 32, generator=gen(5)) > 0.6).float()
    gens = lambda: [gen(s) for s in (1, 2)]  # noqa: E731
    kw = dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=4, height=32, width=32,
              num_images_per_prompt=2, strength=0.7)
    check(lambda **o: ours(**kw, **o, generator=gens()), lambda **o: theirs(**kw, **o, generator=gens()))
    masked = torch.randn(1, 4, 16, 16, generator=gen(6))
    kw.update(masked_image_latents=masked, num_images_per_prompt=1)
    check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))


def test_sd_single_file_inpainting_equals_folder(tmp_path):
    """An SD 1.5 inpainting checkpoint in the original single-file layout gives the folder's (diffusers') result."""
    theirs, path = pipes.sd_single_file(tmp_path, in_channels=9)
    theirs.set_progress_bar_config(disable=True)
    ours = Pipeline.from_single_file(path)
    assert ours.unet.config.in_channels == 9 and ours.default_size == 512
    image, mask = picture(48, 32, 7), mask_picture(48, 32, (10, 4, 40, 24))
    kw = dict(prompt="a red fox", negative_prompt="blurry", image=image, mask_image=mask, num_inference_steps=4,
              height=32, width=48)
    check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))
    folder = Pipeline.from_pretrained(tmp_path / "pipe")
    a = ours(**kw, output_type="latent", generator=gen(), progress=False).images
    torch.testing.assert_close(a, folder(**kw, output_type="latent", generator=gen(), progress=False).images)
    shared = Pipeline.from_single_file(path, **folder.components("vae", "text_encoder"))  # loads the UNet only
    assert shared.vae is folder.vae and shared.text.encoders[0] is folder.text.encoders[0]
    torch.testing.assert_close(shared(**kw, output_type="latent", generator=gen(), progress=False).images, a)


def test_sdxl_refiner_shares_the_base_vae_and_bigG(sdxl):
    """The refiner built on the base's VAE and bigG text encoder: the same objects, nothing loaded twice, and the
    same result as the refiner loaded alone (the tiny base and refiner were made with the same VAE and bigG)."""
    base, refiner, ours_base, ours_refiner = sdxl
    shared = Pipeline.from_pretrained(refiner, **ours_base.components("vae", "text_encoder_2"))
    assert shared.vae is ours_base.vae and shared.text.encoders[0] is ours_base.text.encoders[1]
    again = Pipeline.from_pipe(shared)
    assert again.unet is shared.unet and again.vae is ours_base.vae and again.text is shared.text
    kw = dict(prompt="a lighthouse", image=torch.rand(1, 3, 32, 32, generator=gen(11)), num_inference_steps=4,
              strength=0.5, output_type="latent", progress=False)
    torch.testing.assert_close(shared(**kw, generator=gen()).images, ours_refiner(**kw, generator=gen()).images)
    with pytest.raises(ValueError, match="the shared text encoder does not fit"):
        Pipeline.from_pretrained(refiner, text_encoder_2=ours_base.text.encoders[0])
    with pytest.raises(ValueError, match="cannot share \\['text_encoder'\\]"):
        Pipeline.from_pretrained(refiner, text_encoder=ours_base.text.encoders[0])
    with pytest.raises(ValueError, match="has no \\['text_encoder_2'\\]"):
        Pipeline.tiny().components("text_encoder_2")


def test_inpainting_errors(sd9, sd):
    _, nine = sd9
    _, four = sd
    image, mask = picture(32, 32), mask_picture(32, 32, (4, 4, 20, 20))
    with pytest.raises(ValueError, match="mask_image needs image="):
        four("x", mask_image=mask)
    with pytest.raises(ValueError, match="9 input channels .* give image= and mask_image="):
        nine("x", num_inference_steps=2)
    with pytest.raises(ValueError, match="mask_image is 24x32, image is 32x32"):
        four("x", image=image, mask_image=mask.resize((24, 32)))
    with pytest.raises(ValueError, match="padding_mask_crop pastes into the original PIL image: output_type"):
        four("x", image=image, mask_image=mask, padding_mask_crop=2, output_type="pt")
    with pytest.raises(ValueError, match="padding_mask_crop needs image and mask_image as single PIL images"):
        four("x", image=torch.rand(1, 3, 32, 32), mask_image=mask, padding_mask_crop=2)
    with pytest.raises(ValueError, match="9-channel .* needs masked_image_latents"):
        nine("x", image=torch.randn(1, 4, 16, 16), mask_image=mask, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="no steps left"):
        four("x", image=image, mask_image=mask, strength=0.1, num_inference_steps=2, progress=False)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_sdxl_inpainting(sdxl, sampler):
    """The SDXL default strength 0.9999 (one step fewer, the image's trace kept in the repainted area)."""
    base, _, ours, _ = sdxl
    theirs = diffusers_pipe("StableDiffusionXLInpaintPipeline", base, sampler)
    image, mask = picture(48, 64, 8), mask_picture(48, 64, (6, 10, 40, 50), soft=2)
    kw = dict(prompt="a red fox", prompt_2="in the snow", negative_prompt="blurry", image=image, mask_image=mask,
              num_inference_steps=6, height=64, width=48, guidance_rescale=0.5)
    check(lambda **o: ours(**kw, **o, sampler=sampler, generator=gen()),
          lambda **o: theirs(**kw, **o, generator=gen()))


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_sdxl_base_to_refiner_inpainting(sdxl, sampler):
    """Base with denoising_end and latent output, the refiner with the same mask from denoising_start."""
    base, refiner, ours_base, ours_refiner = sdxl
    theirs_base = diffusers_pipe("StableDiffusionXLInpaintPipeline", base, sampler)
    theirs_refiner = diffusers_pipe("StableDiffusionXLInpaintPipeline", refiner, sampler)
    image, mask = picture(64, 48, 9), mask_picture(64, 48, (10, 8, 50, 40))
    kw = dict(prompt="a lighthouse at dusk", image=image, mask_image=mask, num_inference_steps=8, height=48,
              width=64)
    a = ours_base(**kw, denoising_end=0.75, output_type="latent", sampler=sampler, generator=gen(),
                  progress=False).images
    b = theirs_base(**kw, denoising_end=0.75, output_type="latent", generator=gen()).images
    assert_close(a, b, rel=1e-4, msg="base latents")
    rkw = dict(kw, image=b, denoising_start=0.75, aesthetic_score=7.0)  # both refiners continue the same latents
    check(lambda **o: ours_refiner(**rkw, **o, sampler=sampler, generator=gen()),
          lambda **o: theirs_refiner(**rkw, **o, generator=gen()))


def unet_time_ids(pipe_unet):
    """Records the time_ids of each UNet call (minunet: keyword; diffusers: added_cond_kwargs)."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs["time_ids"] if "time_ids" in kwargs else kwargs["added_cond_kwargs"]["time_ids"]
        seen.append(ids.clone())
    return seen, pipe_unet.register_forward_pre_hook(hook, with_kwargs=True)


NEGATIVE = {"original": dict(negative_original_size=(24, 40)), "crops": dict(negative_crops_coords_top_left=(4, 12)),
            "target": dict(negative_target_size=(80, 96)),
            "all": dict(negative_original_size=(24, 40), negative_crops_coords_top_left=(4, 12),
                        negative_target_size=(80, 96))}
MODES = {"text-to-image": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
         "inpainting": "StableDiffusionXLInpaintPipeline", "refiner img2img": "StableDiffusionXLImg2ImgPipeline"}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("which", list(NEGATIVE))
def test_sdxl_negative_micro_conditioning(sdxl, mode, which):
    """Each negative micro-conditioning argument alone and all together: the time ids the UNet receives equal
    diffusers' (which ignores some of them: see minunet.pipelines.micro_conditioning), and so do the latents."""
    base, refiner, ours_base, ours_refiner = sdxl
    folder, ours = (refiner, ours_refiner) if mode.startswith("refiner") else (base, ours_base)
    theirs = diffusers_pipe(MODES[mode], folder)
    kw = dict(prompt="a red fox", num_inference_steps=3, original_size=(40, 56), crops_coords_top_left=(2, 6),
              target_size=(64, 64), **NEGATIVE[which])
    if mode != "text-to-image":
        kw.update(image=torch.rand(1, 3, 48, 32, generator=gen(10)), strength=0.7)
    if mode == "inpainting":
        kw.update(mask_image=mask_picture(32, 48, (4, 4, 24, 40)), height=48, width=32)
    if mode == "text-to-image":
        kw.update(height=48, width=32)
    ids = []
    for model, call in ((ours.unet, lambda: ours(**kw, output_type="latent", generator=gen(), progress=False)),
                        (theirs.unet, lambda: theirs(**kw, output_type="latent", generator=gen()))):
        seen, handle = unet_time_ids(model)
        try:
            ids.append((call().images, seen[0]))
        finally:
            handle.remove()
    (a, ours_ids), (b, theirs_ids) = ids
    torch.testing.assert_close(ours_ids, theirs_ids, rtol=0, atol=0)
    assert_close(a, b, rel=1e-4, msg="latents")
    negative, positive = ours_ids.chunk(2)
    if which == "all":  # with every argument set the negative ids differ from the positive ones in every mode
        assert not torch.equal(negative, positive)
