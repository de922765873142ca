"""The tiny x2 latent upscaler (issue 24, `--upscale tiny`): the shipped K-UNet on held-out scenes against the
issue's bar (PSNR against the true picture, 2 dB over bicubic), against the bar with the frozen VAE's own loss
taken out (both sides decoded by the same VAE), with FreeU; its file, its CLI defaults; and its recipe at tiny
widths (a short run lowers the loss, resuming equals not stopping, 2 gloo ranks equal one process)."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from minunet.pipelines.upscale import TINY_DEFAULTS, UpscalePipeline
from minunet.training import tiny, tiny_upscaler as tu

N = 16  # held-out scenes (VALIDATION_START ...) per score


@pytest.fixture(scope="module")
def up():
    return UpscalePipeline.tiny()


@torch.no_grad()
def scores(pipe, small, **call):
    """tu.scores over N held-out scenes upscaled from `small` px, and the upscaled images."""
    h = tu.held_out(pipe, N, small, 0, **call)
    return {**tu.scores(h), "images": h["upscaled"]}


@pytest.fixture(scope="module")
def plain(up):
    return scores(up, 64)


@pytest.fixture(scope="module")
def with_freeu(up):
    up.enable_freeu(s1=0.9, s2=0.2, b1=1.3, b2=1.4)  # the README's example values (SD 1.5's FreeU)
    try:
        return scores(up, 64)
    finally:
        up.disable_freeu()


@pytest.mark.xfail(strict=True, reason="shipped model: 64 -> 128 px over 16 held-out scenes, upscaled 17.8 dB, "
                                       "bicubic 34.6 dB; the frozen tiny VAE's own 128 px round trip is 17.9 dB")
def test_upscaled_beats_bicubic_by_2_db(plain):
    """The issue's bar: PSNR against the true 128 px picture, 2 dB over a bicubic upscale of the 64 px one."""
    assert plain["upscaled"] >= plain["bicubic"] + 2, plain


def test_the_frozen_vae_cannot_reach_bicubic_at_128_px(plain):
    """Why the bar above is out of reach for any latent upscaler on this VAE: it was trained at 32 px, and its
    own encode / decode of the true 128 px picture is further from it than the bicubic upscale."""
    assert plain["vae"] < plain["bicubic"] - 2, plain


def test_upscaled_beats_latent_bicubic_by_2_db_against_the_vae_round_trip(plain):
    """The bar with the VAE's loss taken out: both decoded by the same VAE, compared with the VAE round trip of
    the true picture (what a perfect latent upscaler would give), the upscaler beats a bicubic x2 of the latents
    by 2 dB; in latent space too (MSE against the true picture's latents)."""
    assert plain["upscaled_vs_vae"] >= plain["latent_bicubic_vs_vae"] + 2, plain
    assert plain["latent_gain"] >= 2, plain


def test_the_tiny_models_own_size_32_to_64_px(up):
    """`--model tiny --upscale tiny` upscales 32 px pictures: the same bar with the VAE's loss taken out."""
    s = scores(up, 32)
    assert s["upscaled_vs_vae"] >= s["latent_bicubic_vs_vae"] + 2, s


def test_freeu_changes_the_output_and_still_beats_latent_bicubic(plain, with_freeu):
    change = float((plain["images"] - with_freeu["images"]).abs().max())
    assert change > 0.05, change
    assert with_freeu["upscaled_vs_vae"] >= with_freeu["latent_bicubic_vs_vae"] + 2, with_freeu


@pytest.mark.xfail(strict=True, reason="shipped model with FreeU (b 1.3 / 1.4, s 0.9 / 0.2): upscaled 17.6 dB, "
                                       "bicubic 34.6 dB (the VAE's own round trip: 17.9 dB)")
def test_freeu_beats_bicubic_by_2_db(with_freeu):
    assert with_freeu["upscaled"] >= with_freeu["bicubic"] + 2, with_freeu


def test_the_shipped_file_is_the_recipes_structure_in_float16():
    from minunet.loading.io import read_header
    from minunet.weights import TINY_UPSCALER

    header, _, size = read_header(TINY_UPSCALER)
    assert size <= 4_000_000 and {e["dtype"] for e in header.values()} == {"F16"}
    model = tu.build_kunet(tu.TINY_UPSCALER, 0)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: e["shape"] for k, e in header.items()}


def test_a_file_without_its_config_is_named(tmp_path):
    from safetensors.torch import save_file

    from minunet import CheckpointError
    from minunet.loading.unet import load_kunet_file

    path = tmp_path / "k.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=r"k\.safetensors: no usable K-UNet config in the metadata key 'config'"):
        load_kunet_file(path)


def test_cli_tiny_upscales_the_tiny_models_32_px_to_64(tmp_path):
    from PIL import Image

    from minunet.cli import main
    from minunet.cli.generate import TINY_UPSCALE_CFG, TINY_UPSCALE_STEPS

    assert (TINY_UPSCALE_STEPS, TINY_UPSCALE_CFG) == (TINY_DEFAULTS["num_inference_steps"],
                                                      TINY_DEFAULTS["guidance_scale"])
    out = tmp_path / "up.png"
    assert main(["generate", "a red circle on a blue background", "--model", "tiny", "--upscale", "tiny",
                 "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)
    rgb = torch.from_numpy(np.array(image.convert("RGB"))).float()  # (64, 64, 3)
    centre, corner = rgb[24:40, 24:40].mean(dim=(0, 1)), rgb[:8, :8].mean(dim=(0, 1))
    assert centre[0] > centre[2] and corner[2] > corner[0], (centre, corner)  # red middle, blue corners


def test_cli_tiny_upscaler_needs_the_tiny_models_latents(capsys):
    from minunet.cli import main

    assert main(["generate", "x", "--model", "tiny-random", "--upscale", "tiny"]) == 2
    assert "--upscale tiny with --model tiny-random: the tiny upscaler was trained on the latents of --model tiny" \
        in capsys.readouterr().err


# ---- the recipe at tiny widths -----------------------------------------------------------------------------
STAGE = dict(steps=6, batch=4, lr=1e-3, warmup=2, sample_every=10 ** 6, checkpoint_every=10 ** 6, adam_eps=1e-4)
SMALL = dataclasses.replace(  # 3 levels (latents of 16 and 32 px pictures fit), 16 scenes
    tu.TINY_UPSCALER, kunet=dataclasses.replace(tu.TINY_UPSCALER.kunet, block_out_channels=(32, 64, 64),
                                                layers_per_block=1),
    size_cycle=(32, 16), cache_size=16, stages={"upscaler": tiny.Stage(**STAGE)})


@pytest.fixture(scope="module")
def frozen():
    return tu.frozen_pipeline(tu.build_kunet(SMALL, 0))


def params(out):
    from minunet.loading.io import load_safetensors

    state = load_safetensors(Path(out) / "upscaler-state.safetensors")
    return {k: v for k, v in state.items() if k.startswith(("model.", "ema."))}


def test_resuming_gives_the_parameters_of_a_run_that_never_stopped(tmp_path, frozen):
    tu.train_upscaler(SMALL, tmp_path / "straight", pipe=frozen, progress=False)
    tu.train_upscaler(SMALL, tmp_path / "stopped", pipe=frozen, progress=False, stop_at=3)
    tu.train_upscaler(SMALL, tmp_path / "stopped", pipe=frozen, progress=False)
    a, b = params(tmp_path / "straight"), params(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ddp_run(out, world):
    tu.train_upscaler(SMALL, out, world=world, progress=False)


def test_two_gloo_ranks_give_one_process_parameters(tmp_path, frozen):
    """Global batch 4 over 2 ranks = batch 4 in one process, float32, within 1e-5 (and the runs did train)."""
    from test_tiny_training import assert_same_and_trained, on_two_ranks

    two = on_two_ranks(tmp_path, "test_tiny_upscaler")
    tu.train_upscaler(SMALL, tmp_path / "one", pipe=frozen, progress=False)
    start = {f"model.kunet.{k}": v for k, v in tu.build_kunet(SMALL, 0).state_dict().items()}
    assert_same_and_trained(params(tmp_path / "one"), params(two), start)


@torch.no_grad()
def held_out_loss(kunet, pipe, n=16):
    """The recipe's loss on fixed held-out 32 -> 64 px scenes, noise levels and noise (no caption dropout)."""
    indices = list(range(tiny.VALIDATION_START, tiny.VALIDATION_START + n))
    x0, low = tu.scene_latents(pipe, indices, 64, 0), tu.scene_latents(pipe, indices, 32, 0)
    (context, pooled), _ = tu.scene_text(pipe, indices, 0)
    sigma = torch.logspace(-1.5, 1, n)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    return float(tu.UpscalerLoss(kunet.eval())(x0, low, context, pooled, sigma, eps))


def test_a_short_run_lowers_the_loss(tmp_path, frozen):
    """40 steps of batch 8 at tiny widths: the held-out loss falls under 70% of the untrained model's."""
    stage = tiny.Stage(steps=40, batch=8, lr=1e-3, warmup=5, sample_every=10 ** 6, checkpoint_every=10 ** 6)
    recipe = dataclasses.replace(SMALL, cache_size=64, stages={"upscaler": stage})
    before = held_out_loss(tu.build_kunet(recipe, 0), frozen)
    after = held_out_loss(tu.train_upscaler(recipe, tmp_path, pipe=frozen, progress=False).unet, frozen)
    assert after < 0.7 * before, (before, after)


def test_train_tiny_command_writes_the_upscaler_file(tmp_path, capsys, monkeypatch):
    from minunet.cli import main
    from minunet.loading.unet import load_kunet_file

    monkeypatch.setitem(tu.RECIPES, "tiny-upscaler", SMALL)
    monkeypatch.setattr(tu, "RECIPE", SMALL)
    out = tmp_path / "run"
    assert main(["train-tiny", "--model", "tiny-upscaler", "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--no-progress"]) == 0
    assert f"wrote {out / 'upscaler.safetensors'}" in capsys.readouterr().out
    kunet = load_kunet_file(out / "upscaler.safetensors")
    assert kunet.config == SMALL.kunet and (out / "loss.tsv").is_file()
