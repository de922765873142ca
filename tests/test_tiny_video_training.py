"""The tiny video model's recipe (minunet.training.tiny_video): the drawn clips are what their captions say (judged
by the tests' own analyser), the spatial layers start as the image UNet's and the temporal ones add nothing at
first, a short run lowers the loss, resuming gives the parameters of a run that never stopped, 2 gloo ranks give
one process's parameters (float32, 1e-5)."""
import dataclasses
from pathlib import Path

import pytest
import torch

from shapes_judge import judge_clip
from minunet.loading.io import load_safetensors
from minunet.training import moving, tiny, tiny_video

# narrow widths of the real structure; Adam's eps 1e-4 for the rank test (see tests/test_tiny_training.py)
STAGE = dict(steps=6, batch=4, lr=1e-3, warmup=2, sample_every=10 ** 6, checkpoint_every=10 ** 6, adam_eps=1e-4)
SMALL = dataclasses.replace(
    tiny_video.TINY_VIDEO, frames=3, cache_size=8,
    unet=dataclasses.replace(tiny_video.TINY_VIDEO.unet, block_out_channels=(32, 64), attention_levels=(False, True)),
    stages={"unet": tiny.Stage(**STAGE)})


@pytest.fixture(scope="module")
def base():
    return tiny_video.base_pipeline()


def test_drawn_clips_are_what_the_judge_sees():
    """Every drawn clip: the caption's colour, one object in every frame, moving the caption's way."""
    clips, _ = moving.draw_clips(range(60), seed=3)
    for i, clip in enumerate(clips):
        p = moving.draw_clip_params(i, 3)
        v = judge_clip(clip * 0.5 + 0.5)
        assert (v["colour"], v["background"], v["direction"], v["one_object"]) == (
            p["colour"], p["background"], p["direction"], True), (i, p, v)


def test_captions_name_colour_shape_direction_and_background():
    words = {d: {moving.PLAIN_WORDS[d], *moving.OTHER_WORDS[d]} for d in moving.DIRECTIONS}
    drawn = [moving.draw_clip_params(i, 5) for i in range(400)]
    for p in drawn:
        text = p["caption"]
        assert all(w in text.replace(",", "").split() for w in (p["colour"], p["shape"], p["background"])), p
        assert any(f" {w}" in text for w in words[p["direction"]]), p
        others = {w for d, ws in words.items() if d != p["direction"] for w in ws}
        assert not any(w in text.split() for w in others if " " not in w), p
    plain = [p for p in drawn if p["caption"] == moving.plain_caption(p["colour"], p["shape"], p["direction"],
                                                                      p["background"])]
    assert 0.15 < len(plain) / len(drawn) < 0.5


def test_the_video_unet_starts_as_the_image_unet_on_each_frame(base):
    """With the image UNet's attention levels, the initial video UNet is the image UNet applied to each frame
    (float32, within 1e-5 of the output's size): every spatial tensor copied, every temporal layer adding zero."""
    cfg = dataclasses.replace(tiny_video.TINY_VIDEO.unet, attention_levels=(False, True))
    unet = tiny_video.build_unet(dataclasses.replace(tiny_video.TINY_VIDEO, unet=cfg), 0, base.unet)
    left = tiny_video.copy_spatial_(unet, base.unet)
    assert left and all(k.startswith("transformer_in.") or ".temp_" in k for k in left), left
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        video = unet(x, 500, context)
        image = base.unet(x.transpose(1, 2).flatten(0, 1), 500, context.repeat_interleave(3, 0))
    image = image.unflatten(0, (2, 3)).transpose(1, 2)
    assert float((video - image).abs().max()) <= 1e-5 * float(image.abs().max())


def test_the_recipe_keeps_every_spatial_tensor_of_the_image_unet_it_has(base):
    unet = tiny_video.build_unet(tiny_video.TINY_VIDEO, 0, base.unet)
    left = tiny_video.copy_spatial_(unet, base.unet)
    assert all(k.startswith("transformer_in.") or ".temp_" in k for k in left), left
    assert torch.equal(unet.mid_block.attentions[0].proj_in.weight,
                       base.unet.mid_block.attentions[0].proj_in.weight[..., 0, 0])


def stage_params(out):
    state = load_safetensors(Path(out) / "unet-state.safetensors")
    return {k: v for k, v in state.items() if k.startswith(("model.", "ema."))}


def run(out, base, **kw):
    return tiny_video.train_unet(SMALL, out, base=base, progress=False, mixed_precision="no", **kw)


def test_resuming_gives_the_parameters_of_a_run_that_never_stopped(tmp_path, base):
    run(tmp_path / "straight", base)
    run(tmp_path / "stopped", base, stop_at=3)
    run(tmp_path / "stopped", base)
    a, b = stage_params(tmp_path / "straight"), stage_params(tmp_path / "stopped")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"


def ddp_run(out, world):
    run(out, tiny_video.base_pipeline(), world=world)


def test_two_gloo_ranks_give_one_process_parameters(tmp_path, base):
    """Global batch 4 over 2 ranks (2 clips each) = batch 4 in one process, float32, within 1e-5."""
    from test_tiny_training import assert_same_and_trained, on_two_ranks

    two = on_two_ranks(tmp_path, "test_tiny_video_training")
    run(tmp_path / "one", base)
    start = {f"model.unet.{k}": v for k, v in tiny_video.build_unet(SMALL, 0, base.unet).state_dict().items()}
    assert_same_and_trained(stage_params(tmp_path / "one"), stage_params(two), start)


@torch.no_grad()
def held_out_loss(recipe, unet, base, n=16):
    """The recipe's loss on fixed held-out clips, timesteps and noise (no caption dropout)."""
    latents, rows, features = tiny_video.clip_cache(recipe, base.vae, base.text, n, data_seed=12345)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 999, n).long()
    eps = torch.randn(latents.shape, generator=g)
    loss = tiny_video.VideoDenoiserLoss(unet, tiny.sd15_schedule().alphas_cumprod(), recipe.min_snr,
                                        recipe.high_noise_snr)
    return float(loss(features[rows], latents, t, eps))


def test_the_loss_weighs_x0_error_at_high_noise_and_min_snr_at_low():
    """Below SNR 0.1 the loss is 0.1 x the x0 prediction's MSE (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar));
    at low noise min-SNR-5's epsilon weight 5 / SNR; in between plain epsilon MSE."""
    g = torch.Generator().manual_seed(0)
    x0, eps, pred = (torch.randn(1, 4, 2, 4, 4, generator=g) for _ in range(3))
    abar = tiny.sd15_schedule().alphas_cumprod()
    loss = tiny_video.VideoDenoiserLoss(lambda x, t, c: pred, abar, 5.0, 0.1)
    for t in (999, 500, 0):
        a = abar[t]
        snr = float(a / (1 - a))
        got = float(loss(None, x0, torch.tensor([t]), eps))
        eps_mse = float((pred - eps).pow(2).mean())
        if t == 999:
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            x0_hat = (xt - (1 - a).sqrt() * pred) / a.sqrt()
            assert snr < 0.1 and abs(got - 0.1 * float((x0_hat - x0).pow(2).mean())) <= 1e-4 * got
        elif t == 0:
            assert snr > 5 and abs(got - 5 / snr * eps_mse) <= 1e-5 * got
        else:
            assert 0.1 < snr < 5 and abs(got - eps_mse) <= 1e-6 * got


def test_a_short_run_lowers_the_loss(tmp_path, base):
    """Narrow widths, 20 steps of 4 clips: the held-out loss falls under 80% of the untrained model's."""
    stage = tiny.Stage(steps=20, batch=4, lr=2e-3, warmup=5, sample_every=10 ** 6, checkpoint_every=10 ** 6)
    recipe = dataclasses.replace(SMALL, cache_size=80, stages={"unet": stage})
    before = held_out_loss(recipe, tiny_video.build_unet(recipe, 0, base.unet), base)
    after = held_out_loss(recipe, tiny_video.train_unet(recipe, tmp_path, base=base, progress=False), base)
    assert after < 0.8 * before, (before, after)
