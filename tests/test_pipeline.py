"""Prompt to image, end to end: minunet's Pipeline against diffusers' pipelines on tiny random models saved in the
diffusers layout (real CLIP tokenizer). Latents within 1e-4 relative, images within 1e-3."""
import pytest
import torch

import pipes
from helpers import assert_close
from minunet.pipelines.image import Pipeline
from pipes import check, diffusers_pipe, gen


def with_karras(ours, theirs):
    """Karras sigmas on both sides: minunet's schedule option, diffusers' scheduler config."""
    import dataclasses

    ours.schedule = dataclasses.replace(ours.schedule, use_karras_sigmas=True)
    theirs.scheduler = type(theirs.scheduler).from_config(theirs.scheduler.config, use_karras_sigmas=True)


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "ddim", "dpmpp_2m"])
def test_sd_text_to_image(sd, sampler):
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, sampler, safety_checker=None,
                            requires_safety_checker=False)
    kw = dict(prompt=["a red fox in the snow", "a lighthouse"], negative_prompt=["blurry", "ugly"],
              num_inference_steps=5, height=64, width=48)
    eta = {"eta": 0.5} if sampler == "ddim" else {}
    check(lambda **o: ours(**kw, **o, **eta, sampler=sampler, generator=gen()),
          lambda **o: theirs(**kw, **o, **eta, generator=gen()))


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_sd_with_freeu_equals_diffusers_enable_freeu(sd, sampler):
    """FreeU with mapping="diffusers", version=1 is diffusers' enable_freeu, end to end."""
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, sampler, safety_checker=None,
                            requires_safety_checker=False)
    theirs.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(0.9, 0.2, 1.2, 1.4, mapping="diffusers", version=1)
    try:
        kw = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=4, height=48, width=64)
        check(lambda **o: ours(**kw, **o, sampler=sampler, generator=gen()),
              lambda **o: theirs(**kw, **o, generator=gen()))
        plain = ours(**kw, sampler=sampler, generator=gen(), output_type="latent", progress=False).images
    finally:
        ours.disable_freeu()
    off = ours(**kw, sampler=sampler, generator=gen(), output_type="latent", progress=False).images
    assert (plain - off).abs().max() > 1e-3  # FreeU did change the result


@torch.no_grad()
def test_sd_clip_skip(sd):
    """clip_skip=1 on prompt and negative: diffusers given the same embeddings, built here from transformers'
    hidden states (the layer before the last, through the final LayerNorm)."""
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, safety_checker=None, requires_safety_checker=False)
    enc, tok = theirs.text_encoder, theirs.tokenizer

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return enc.final_layer_norm(enc(ids, output_hidden_states=True).hidden_states[-2])
    kw = dict(num_inference_steps=4, height=48, width=48)
    prompt, negative = ["a red fox in the snow", "a lighthouse"], ["blurry", "ugly"]
    check(lambda **o: ours(prompt, negative_prompt=negative, clip_skip=1, **kw, **o, generator=gen()),
          lambda **o: theirs(prompt_embeds=embed(prompt), negative_prompt_embeds=embed(negative), **kw, **o,
                             generator=gen()))
    skipped = ours(prompt, negative_prompt=negative, clip_skip=1, **kw, output_type="latent", generator=gen(),
                   progress=False).images
    plain = ours(prompt, negative_prompt=negative, **kw, output_type="latent", generator=gen(), progress=False).images
    assert (skipped - plain).abs().max() > 1e-3  # the option reaches the encoder


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_sd_img2img(sd, sampler):
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionImg2ImgPipeline", folder, sampler, safety_checker=None,
                            requires_safety_checker=False)
    image = torch.rand(1, 3, 48, 64, generator=gen(3))
    kw = dict(prompt="a cat", image=image, strength=0.6, num_inference_steps=8, guidance_scale=6.0)
    check(lambda **o: ours(**kw, **o, sampler=sampler, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))


def test_sd_generator_lists_and_images_per_prompt(sd):
    """num_images_per_prompt and one generator per image, text-to-image (Euler a: per-step draws too) and img2img
    (one image for two prompts: repeated before each per-sample VAE draw)."""
    folder, ours = sd
    gens = lambda: [gen(s) for s in (5, 6, 7, 8)]  # noqa: E731
    kw = dict(prompt=["a red fox", "a lighthouse"], negative_prompt=["blurry", "dark"], num_inference_steps=4,
              num_images_per_prompt=2, height=48, width=48)
    theirs = diffusers_pipe("StableDiffusionPipeline", folder, "euler_a", safety_checker=None,
                            requires_safety_checker=False)
    check(lambda **o: ours(**kw, **o, sampler="euler_a", generator=gens()),
          lambda **o: theirs(**kw, **o, generator=gens()))
    image = torch.rand(1, 3, 48, 48, generator=gen(3))
    kw = dict(prompt=["a red fox", "a lighthouse"], image=image, strength=0.7, num_inference_steps=5)
    theirs = diffusers_pipe("StableDiffusionImg2ImgPipeline", folder, safety_checker=None,
                            requires_safety_checker=False)
    check(lambda **o: ours(**kw, **o, generator=gens()[:2]), lambda **o: theirs(**kw, **o, generator=gens()[:2]))
    # one generator, one image, two prompts: diffusers encodes and draws once, then repeats the latents
    check(lambda **o: ours(**kw, **o, generator=gen(9)), lambda **o: theirs(**kw, **o, generator=gen(9)))
    with pytest.raises(ValueError, match="a list of 3 generators was given for a batch of 2 samples"):
        ours(**kw, generator=gens()[:3], progress=False)
    with pytest.raises(ValueError, match="image has a batch of 2, which cannot be repeated to the 3 samples"):
        ours(["a", "b", "c"], image=image.repeat(2, 1, 1, 1), num_inference_steps=2, progress=False)


def test_sdxl_text_to_image_micro_conditioning(sdxl):
    base, _, ours, _ = sdxl
    theirs = diffusers_pipe("StableDiffusionXLPipeline", base)
    kw = dict(prompt="a red fox", prompt_2="in the snow", negative_prompt="blurry", num_inference_steps=5,
              height=64, width=48, original_size=(512, 384), target_size=(640, 480), crops_coords_top_left=(8, 16),
              guidance_rescale=0.7)
    check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))


@pytest.mark.parametrize("karras", [False, True], ids=["plain", "karras"])
def test_sdxl_dpmpp_2m(sdxl, karras):
    base, _, ours, _ = sdxl
    theirs = diffusers_pipe("StableDiffusionXLPipeline", base, "dpmpp_2m")
    saved = ours.schedule
    if karras:
        with_karras(ours, theirs)
    try:
        kw = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=6, height=64, width=48)
        check(lambda **o: ours(**kw, **o, sampler="dpmpp_2m", generator=gen()),
              lambda **o: theirs(**kw, **o, generator=gen()))
    finally:
        ours.schedule = saved


def test_sd_img2img_dpmpp_2m(sd):
    folder, ours = sd
    theirs = diffusers_pipe("StableDiffusionImg2ImgPipeline", folder, "dpmpp_2m", safety_checker=None,
                            requires_safety_checker=False)
    image = torch.rand(1, 3, 48, 64, generator=gen(3))
    kw = dict(prompt="a cat", image=image, strength=0.6, num_inference_steps=8, guidance_scale=6.0)
    check(lambda **o: ours(**kw, **o, sampler="dpmpp_2m", generator=gen()),
          lambda **o: theirs(**kw, **o, generator=gen()))


def test_assigning_pipe_unet_takes_effect(sd):
    """The SDXL guide's idiom `pipe.unet = torch.compile(pipe.unet, ...)`: the pipeline calls whatever pipe.unet is
    at call time; fullgraph=True compiles the UNet in one graph (backend "eager": dynamo's tracing without
    inductor's minutes of CPU codegen; the idiom's mode="reduce-overhead" only changes inductor's backend)."""
    _, ours = sd
    plain = ours.unet
    kw = dict(prompt="a fox", num_inference_steps=2, height=32, width=32, output_type="latent", progress=False)
    expected = ours(**kw, generator=gen()).images
    calls = []
    compiled = torch.compile(plain, fullgraph=True, backend=lambda gm, inputs: calls.append(gm) or gm.forward)
    try:
        ours.unet = compiled
        got = ours(**kw, generator=gen()).images
    finally:
        ours.unet = plain
    assert len(calls) >= 1  # dynamo traced the UNet as one graph (fullgraph=True raises on any graph break)
    assert_close(got, expected, rel=1e-5)


def test_sdxl_img2img(sdxl):
    base, _, ours, _ = sdxl
    theirs = diffusers_pipe("StableDiffusionXLImg2ImgPipeline", base)
    image = torch.rand(1, 3, 64, 48, generator=gen(4))
    kw = dict(prompt="a red fox", image=image, strength=0.5, num_inference_steps=6)
    check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))


def test_sdxl_base_to_refiner_hand_over(sdxl):
    base, refiner, ours_base, ours_refiner = sdxl
    theirs_base = diffusers_pipe("StableDiffusionXLPipeline", base)
    theirs_refiner = diffusers_pipe("StableDiffusionXLImg2ImgPipeline", refiner)
    kw = dict(prompt="a lighthouse at dusk", num_inference_steps=8, height=48, width=64)
    a = ours_base(**kw, denoising_end=0.75, output_type="latent", generator=gen(), progress=False).images
    b = theirs_base(**kw, denoising_end=0.75, output_type="latent", generator=gen()).images
    assert_close(a, b, rel=1e-4, msg="base latents")
    # the refiner continues from the same latents in both (so only the refiner stage is compared here)
    rkw = dict(prompt="a lighthouse at dusk", image=b, num_inference_steps=8, denoising_start=0.75, aesthetic_score=7.0)
    check(lambda **o: ours_refiner(**rkw, **o, generator=gen()), lambda **o: theirs_refiner(**rkw, **o, generator=gen()))


def test_sd_single_file(tmp_path):
    """One original-layout file (UNet + VAE + text encoder) gives the pipeline diffusers builds from the folder."""
    theirs, path = pipes.sd_single_file(tmp_path)
    theirs.set_progress_bar_config(disable=True)
    ours = Pipeline.from_single_file(path)
    assert ours.family == "sd1" and ours.default_size == 512
    kw = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=4, height=32, width=48)
    check(lambda **o: ours(**kw, **o, generator=gen()), lambda **o: theirs(**kw, **o, generator=gen()))


def test_tiny_pipeline_is_deterministic_and_pil():
    pipe = Pipeline.tiny()
    a = pipe("noise", num_inference_steps=3, generator=gen(1), progress=False).images[0]
    b = Pipeline.tiny()("noise", num_inference_steps=3, generator=gen(1), progress=False).images[0]
    assert a.size == (128, 128) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()


def test_bad_arguments(sd):
    _, ours = sd
    with pytest.raises(ValueError, match="height=61 must be a positive multiple of 2"):
        ours("x", height=61, num_inference_steps=2)
    with pytest.raises(ValueError, match="sampler 'heun'"):
        ours("x", sampler="heun")
    with pytest.raises(ValueError, match="clip_skip=2 is too large"):
        ours("x", clip_skip=2, num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="denoising_start needs image"):
        ours("x", denoising_start=0.5)
    with pytest.raises(ValueError, match="num_inference_steps|steps"):
        ours("x", num_inference_steps=0, progress=False)
