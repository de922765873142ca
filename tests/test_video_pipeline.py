"""Prompt to video: minunet's VideoPipeline against diffusers' TextToVideoSDPipeline on a tiny random pipeline saved
in the diffusers layout (real CLIP tokenizer with ms-1.7b's configs, OpenCLIP-style gelu text encoder, SD VAE
structure, video UNet). Latents within 1e-4 of their scale, frames ([0, 1]) within 1e-3."""
import warnings

import numpy as np
import pytest
import torch

import pipes
from helpers import assert_close, randomize_
from minunet import VideoPipeline
from minunet.models.video import VideoUNetConfig
from minunet.weights import CONFIGS
from minunet.loading.configs import to_diffusers

SCHEDULER = CONFIGS / "text-to-video-ms-1.7b" / "scheduler"
UNET = VideoUNetConfig(block_out_channels=(32, 64), attention_levels=(True, True), head_size=16, context_dim=32,
                       norm_num_groups=8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def video_pipeline(folder, seed=0):
    """A TextToVideoSDPipeline with tiny random parts, saved to `folder` and returned."""
    from diffusers import DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    unet = randomize_(UNet3DConditionModel(**to_diffusers(UNET), sample_size=8).eval(), seed + 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers logs that the pipeline is deprecated
        pipe = TextToVideoSDPipeline(
            vae=pipes.diffusers_vae(seed), text_encoder=pipes.text_encoder(32, 2, seed=seed + 1, act="gelu"),
            tokenizer=pipes.tokenizer(folder / "tok", "text-to-video-ms-1.7b"), unet=unet,
            scheduler=DDIMScheduler.from_pretrained(SCHEDULER))
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v")
    video_pipeline(folder)
    return folder, VideoPipeline.from_pretrained(folder)


def diffusers_pipe(folder, scheduler):
    import diffusers

    pipe = diffusers.TextToVideoSDPipeline.from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(ours_fn, theirs_fn):
    a = ours_fn(output_type="latent", progress=False).frames
    b = theirs_fn(output_type="latent").frames
    assert a.shape == b.shape
    assert_close(a, b, rel=1e-4, msg="latents")
    a = ours_fn(output_type="np", progress=False).frames
    b = theirs_fn(output_type="np").frames
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


KW = dict(prompt=["a red fox in the snow", "a lighthouse"], negative_prompt=["blurry", "ugly"], num_frames=3,
          num_inference_steps=3, height=16, width=24)


@pytest.mark.parametrize("sampler, scheduler", [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler"),
                                                ("euler_a", "EulerAncestralDiscreteScheduler")])
def test_matches_diffusers(tiny, sampler, scheduler):
    folder, ours = tiny
    theirs = diffusers_pipe(folder, scheduler)
    check(lambda **o: ours(**KW, **o, sampler=sampler, generator=gen()),
          lambda **o: theirs(**KW, **o, generator=gen()))


@pytest.mark.parametrize("sampler, scheduler", [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_with_freeu_matches_diffusers_enable_freeu(tiny, sampler, scheduler):
    folder, ours = tiny
    theirs = diffusers_pipe(folder, scheduler)
    theirs.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    ours.enable_freeu(0.9, 0.2, 1.2, 1.4, mapping="diffusers")
    try:
        check(lambda **o: ours(**KW, **o, sampler=sampler, generator=gen()),
              lambda **o: theirs(**KW, **o, generator=gen()))
        with_freeu = ours(**KW, sampler=sampler, generator=gen(), output_type="latent", progress=False).frames
    finally:
        ours.disable_freeu()
    plain = ours(**KW, sampler=sampler, generator=gen(), output_type="latent", progress=False).frames
    assert (with_freeu - plain).abs().max() > 1e-3


def test_defaults_are_diffusers(tiny):
    """Defaults (guidance 9.0, eta 0, unet.sample_size x 8 pixels, "np" frames, DDIM from the scheduler config) give
    diffusers' result; only the step count and frame count are set."""
    import inspect

    folder, ours = tiny
    p = inspect.signature(VideoPipeline.__call__).parameters
    assert (p["num_inference_steps"].default, p["guidance_scale"].default) == (50, 9.0)
    assert p["num_frames"].default is None and ours.default_frames == 16  # None: the pipeline's, 16 as diffusers
    theirs = diffusers_pipe(folder, "DDIMScheduler")
    kw = dict(prompt="a fox", num_inference_steps=2, num_frames=2)
    a = ours(**kw, generator=gen(), progress=False).frames
    b = theirs(**kw, generator=gen()).frames
    assert a.shape == b.shape == (1, 2, 16, 16, 3)   # sample_size 8 x VAE factor 2
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-3)


def test_output_types_and_chunked_decode(tiny):
    _, ours = tiny
    kw = dict(prompt="a fox", num_frames=5, num_inference_steps=2, height=16, width=24, progress=False)
    latents = ours(**kw, generator=gen(), output_type="latent").frames
    assert latents.shape == (1, 4, 5, 8, 12)
    whole = ours.decode(latents, chunk_size=5)
    for chunk in (1, 2, 3):
        assert_close(ours.decode(latents, chunk_size=chunk), whole, msg=f"chunk {chunk}")  # float round-off only
    pt = ours(**kw, generator=gen(), output_type="pt").frames
    assert pt.shape == (1, 5, 3, 16, 24)
    np_frames = ours(**kw, generator=gen(), output_type="np").frames
    np.testing.assert_array_equal(np_frames, pt.permute(0, 1, 3, 4, 2).numpy())
    pil = ours(**kw, generator=gen(), output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (24, 16)
    np.testing.assert_array_equal(np.asarray(pil[0][3]), (np_frames[0, 3] * 255).round().astype(np.uint8))


@pytest.mark.parametrize("kw, message", [
    (dict(num_frames=0), "num_frames must be an int >= 1"),
    (dict(height=21), "height=21 must be a positive multiple of 2"),
    (dict(width=0), "width=0 must be a positive multiple of 2"),
    (dict(sampler="plms"), "sampler 'plms' is not one of"),
    (dict(output_type="gif"), "output_type 'gif' is not one of"),
    (dict(decode_chunk_size=0), "decode_chunk_size must be an int >= 1"),
])
def test_errors(tiny, kw, message):
    _, ours = tiny
    with pytest.raises(ValueError, match=message):
        ours("x", **kw)


def test_callback_sees_and_replaces_unfolded_latents(tiny):
    _, ours = tiny
    seen = []

    def callback(i, t, x):
        seen.append(tuple(x.shape))
        return torch.zeros_like(x) if i == 1 else None   # the last step's output replaced
    out = ours("a fox", num_frames=3, num_inference_steps=2, height=16, width=24, generator=gen(),
               output_type="latent", callback=callback, progress=False).frames
    assert seen == [(1, 4, 3, 8, 12)] * 2
    assert out.abs().max() == 0


def test_tiny_runs_and_is_seeded():
    pipe = VideoPipeline.tiny_random()
    a = pipe("a fox", num_frames=4, num_inference_steps=2, generator=gen(1), progress=False).frames
    b = pipe("a fox", num_frames=4, num_inference_steps=2, generator=gen(1), progress=False).frames
    assert a.shape == (1, 4, 64, 64, 3)
    np.testing.assert_array_equal(a, b)
