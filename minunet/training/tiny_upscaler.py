"""The tiny x2 latent upscaler (`--upscale tiny`): a K-UNet (minunet/models/kunet.py, the structure of
stabilityai/sd-x2-latent-upscaler) trained on the shapes data set to turn the tiny image model's latents of a
picture into those of the same scene drawn at twice the size, with the tiny model's VAE and text encoder frozen.

    minunet train-tiny --model tiny-upscaler --out runs/up --threads 1     # runs/up/upscaler.safetensors

Training is k-diffusion's (Karras et al. 2022, "EDM"), with exactly the preconditioning UpscalePipeline samples
with (sigma_data 1): for clean latents x0 (the VAE encoder's posterior mean of the 2s px picture, scaled), noise
level sigma and eps ~ N(0, 1), x = x0 + sigma eps and the UNet's first 4 output channels F are regressed onto
    target = (x0 - x / (sigma^2 + 1)) * sqrt(sigma^2 + 1) / sigma,
so that x / (sigma^2 + 1) + sigma / sqrt(sigma^2 + 1) * F = x0 (the KarrasDenoiser of pipelines/upscale.py); plain
MSE on F is EDM's loss weighting. The UNet sees [x / sqrt(sigma^2 + 1), nearest x2 of the s px picture's latents],
c_noise = log(sigma) / 4, timestep_cond = [64 ones, 64 zeros, pooled text] and CLIP's last hidden state before the
final LayerNorm, as the pipeline gives them. ln(sigma) ~ N(P_MEAN, P_STD^2): EDM's -1.2 / 1.2 for sigma_data 0.5,
shifted by ln 2 for sigma_data 1, clamped to the sampler's sigma range. 10% empty captions (guidance's negative).
Two scales are trained, 64 -> 128 px (the issue's) and 32 -> 64 px (the tiny image model draws 32 px), as fixed
steps of a cycle; the latents and text features of the pictures are computed once (the cache).
Every random draw of step k comes from a generator seeded by (seed, k), so resuming and N ranks (tiny.Run, DDP)
give the parameters of one uninterrupted process.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.kunet import KUNet, KUNetConfig
from . import distributed, shapes
from .tiny import VALIDATION_START, Run, Stage, _stage, save_grid, train_loop

NOISE_LEVEL_FEATURES = 64  # timestep_cond's noise-level part: 64 ones, 64 zeros (as UpscalePipeline)
P_MEAN, P_STD = -1.2 + math.log(2), 1.2


@dataclass(frozen=True)
class UpscalerRecipe:
    kunet: KUNetConfig
    stages: dict                        # {"upscaler": Stage}
    size_cycle: tuple = (64, 64, 64, 32)  # step k upscales pictures of size_cycle[k % len] px to twice that
    cache_size: int = 1536              # scenes whose latents (at every size) and text features are computed once
    caption_dropout: float = 0.1
    p_mean: float = P_MEAN
    p_std: float = P_STD


TINY_UPSCALER = UpscalerRecipe(
    # 4 levels (K-UNet rule: the last two widths are 2 x the first); text width 64 (the tiny model's CLIP);
    # 1.34 M parameters, 2.7 MB in float16. fp32: bf16 autocast was measured slower at these widths
    kunet=KUNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, head_size=32, context_dim=64,
                      time_cond_dim=2 * NOISE_LEVEL_FEATURES + 64),
    stages={"upscaler": Stage(steps=1000, batch=24, lr=1e-3, sample_every=250)},
)
RECIPES = {"tiny-upscaler": TINY_UPSCALER}
RECIPE, STAGES = TINY_UPSCALER, ("upscaler",)


def step_generator(seed, step):
    """The generator of step `step`'s draws: tiny.step_generator's formula, with this recipe's own offset (the
    shipped file was trained with it; tiny's refine stage, added later, uses the same number for other draws)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 750_011 + step)


def build_kunet(recipe, seed):
    torch.manual_seed(seed + 3)
    return KUNet(recipe.kunet)


def frozen_pipeline(kunet):
    """UpscalePipeline of `kunet` with the shipped tiny model's VAE, text encoder and tokenizer (all frozen)."""
    from ..pipelines.upscale import UpscalePipeline

    return UpscalePipeline.with_tiny_parts(kunet)


# ---- the loss ---------------------------------------------------------------------------------------------------
def timestep_cond(pooled):
    """(B, 128 + width): the noise-level embedding at 0 (cos = 1, sin = 0) ++ the pooled text, as the pipeline."""
    ones = torch.ones(pooled.shape[0], NOISE_LEVEL_FEATURES, dtype=pooled.dtype, device=pooled.device)
    return torch.cat([ones, torch.zeros_like(ones), pooled], dim=1)


class UpscalerLoss(nn.Module):
    """EDM denoiser loss with sigma_data 1 (see the module docstring)."""

    def __init__(self, kunet):
        super().__init__()
        self.kunet = kunet

    def forward(self, x0, low, context, pooled, sigma, eps):
        """x0 (b, 4, 2h, 2w) scaled latents of the large picture, low (b, 4, h, w) of the small one, context
        (b, 77, C), pooled (b, C), sigma (b,), eps like x0 -> mean squared error of the preconditioned output."""
        s = sigma[:, None, None, None]
        scale = (s ** 2 + 1).sqrt()
        x = x0 + s * eps
        x_in = torch.cat([x / scale, F.interpolate(low, scale_factor=2, mode="nearest")], dim=1)
        out = self.kunet(x_in, torch.log(sigma) / 4, context, timestep_cond=timestep_cond(pooled))[:, :-1].float()
        target = (x0 - x / (s ** 2 + 1)) * scale / s
        return (out - target).pow(2).mean()


# ---- the data ---------------------------------------------------------------------------------------------------
def _like_vae(x, vae):
    p = next(vae.parameters())
    return x.to(p.device, p.dtype)


@torch.no_grad()
def scene_latents(pipe, indices, size, data_seed, chunk=64):
    """Scaled VAE latents (posterior means) of the scenes `indices` drawn at `size` px: (n, 4, size/4, size/4)."""
    vae, out = pipe.vae, []
    for start in range(0, len(indices), chunk):
        x, _ = shapes.draw_batch(indices[start:start + chunk], data_seed, size)
        out.append(vae.encode(_like_vae(x, vae)).mean.float() * vae.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def scene_text(pipe, indices, data_seed):
    """(context (n, 77, C), pooled (n, C)) of the scenes' captions, and of "" ((1, 77, C), (1, C))."""
    captions = [shapes.draw_params(int(i), data_seed)["caption"] for i in indices]
    context, pooled = zip(*[pipe.encode_prompt(captions[i:i + 256], [], False) for i in range(0, len(captions), 256)])
    return (torch.cat(context).float(), torch.cat(pooled).float()), \
        tuple(v.float() for v in pipe.encode_prompt([""], [], False))


def build_cache(recipe, pipe, n, data_seed, progress=True):
    """{size: latents of scenes 0 .. n-1 at size px} for every size a step reads (small and large), and the text
    (each rank computes all of it)."""
    from tqdm import tqdm

    sizes = sorted({s for low in recipe.size_cycle for s in (low, 2 * low)})
    indices = list(range(n))
    bar = tqdm(sizes, desc="latent cache", leave=False, disable=not progress)
    latents = {s: scene_latents(pipe, indices, s, data_seed) for s in bar}
    return latents, *scene_text(pipe, indices, data_seed)


# ---- the stage --------------------------------------------------------------------------------------------------
def sigma_range(pipe):
    """(sigma_min, sigma_max) of the pipeline's schedule: what its sampler visits."""
    abar = pipe.schedule.alphas_cumprod()
    sigmas = ((1 - abar) / abar).sqrt()
    return float(sigmas.min()), float(sigmas.max())


def _info(recipe, seed, stage):
    name_of = next((k for k, v in RECIPES.items() if v == recipe), "custom")
    return {"recipe": name_of, "stage": "upscaler", "seed": seed, "steps": stage.steps, "batch": stage.batch,
            "mixed_precision": "no"}


def train_upscaler(recipe, out, *, seed=0, steps=None, batch=None, world=None, progress=True, stop_at=None,
                   pipe=None):
    """Train (or resume) the K-UNet; -> the pipeline holding its EMA weights."""
    world = world or distributed.World()
    stage = _stage(recipe, "upscaler", steps, batch)
    kunet = build_kunet(recipe, seed)
    pipe = pipe if pipe is not None else frozen_pipeline(kunet)
    run = Run("upscaler", stage, UpscalerLoss(kunet), world, out, _info(recipe, seed, stage))
    run.autocast_ok = False
    run.resume()
    cache = build_cache(recipe, pipe, recipe.cache_size, seed, progress and world.main)
    latents, (context, pooled), (empty_context, empty_pooled) = cache
    lo, hi = sigma_range(pipe)
    part = world.shard(stage.batch)

    def batch_fn(step):
        small = recipe.size_cycle[step % len(recipe.size_cycle)]
        idx = (torch.arange(stage.batch) + step * stage.batch) % recipe.cache_size
        g = step_generator(seed, step)
        sigma = (recipe.p_mean + recipe.p_std * torch.randn(stage.batch, generator=g)).exp().clamp(lo, hi)
        x0, low = latents[2 * small][idx], latents[small][idx]
        eps = torch.randn(x0.shape, generator=g)
        drop = torch.rand(stage.batch, generator=g) < recipe.caption_dropout  # -> "" (guidance's negative)
        ctx = torch.where(drop[:, None, None], empty_context, context[idx])
        pool = torch.where(drop[:, None], empty_pooled, pooled[idx])
        return tuple(v[part].to(world.device) for v in (x0, low, ctx, pool, sigma, eps))

    train_loop(run, batch_fn, lambda r, k: upscaler_samples(recipe, r, k, pipe, seed), progress, stop_at)
    return ema_pipeline(recipe, run, pipe, seed)


def ema_pipeline(recipe, run, pipe, seed):
    """The pipeline with the EMA K-UNet (its fixed Fourier frequencies, never trained, from the seed)."""
    kunet = build_kunet(recipe, seed)
    kunet.load_state_dict({**kunet.state_dict(), **run.ema_state("kunet.")})
    return type(pipe)(kunet.eval(), pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.schedule)


# ---- samples and scores -----------------------------------------------------------------------------------------
def psnr(a, b):
    """Mean PSNR (dB) of images in [-1, 1] (B, 3, H, W), as pixels in [0, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((-10 * torch.log10(mse.clamp(min=1e-10))).mean())


@torch.no_grad()
def held_out(pipe, n, small, data_seed, first=VALIDATION_START, **call):
    """Scenes first .. first + n - 1 (never trained on) upscaled from `small` px; `call`: UpscalePipeline
    arguments over TINY_DEFAULTS. -> a dict: images in [-1, 1] (B, 3, 2s, 2s): truth (drawn at 2 x small px),
    bicubic (of the small picture), upscaled (decoded), vae (the VAE round trip of the truth, the ceiling),
    latent_bicubic (a bicubic x2 of the small picture's latents, decoded); scaled latents (B, 4, s/2, s/2): target
    (the truth's encoder latents), latents (the upscaler's)."""
    from ..pipelines.upscale import TINY_DEFAULTS

    indices = list(range(first, first + n))
    truth, captions = shapes.draw_batch(indices, data_seed, 2 * small)
    small_pictures, _ = shapes.draw_batch(indices, data_seed, small)
    low = scene_latents(pipe, indices, small, data_seed)
    latents = pipe(captions, image=low, generator=torch.Generator().manual_seed(0), output_type="latent",
                   progress=False, **{**TINY_DEFAULTS, **call}).images
    target = scene_latents(pipe, indices, 2 * small, data_seed)
    vae = pipe.vae

    def decode(z):
        return vae.decode(_like_vae(z / vae.scaling_factor, vae)).float().clamp(-1, 1)

    bicubic = F.interpolate(small_pictures, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1)
    latent_bicubic = decode(F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False))
    return dict(truth=truth, bicubic=bicubic, upscaled=decode(latents), vae=decode(target),
                latent_bicubic=latent_bicubic, target=target, latents=latents, low=low)


def scores(h):
    """held_out's dict -> dB: PSNR against the truth (upscaled, bicubic, vae: the ceiling), PSNR against the VAE
    round trip (upscaled_vs_vae, latent_bicubic_vs_vae), and latent_gain = 10 log10 of the latent MSE of a bicubic
    x2 of the small latents over the upscaler's (both against the truth's latents)."""
    bicubic_latents = F.interpolate(h["low"], scale_factor=2, mode="bicubic", align_corners=False)

    def mse(z):
        return float((z - h["target"]).pow(2).mean())

    return dict(upscaled=psnr(h["upscaled"], h["truth"]), bicubic=psnr(h["bicubic"], h["truth"]),
                vae=psnr(h["vae"], h["truth"]), upscaled_vs_vae=psnr(h["upscaled"], h["vae"]),
                latent_bicubic_vs_vae=psnr(h["latent_bicubic"], h["vae"]),
                latent_gain=10 * math.log10(mse(bicubic_latents) / mse(h["latents"])))


def upscaler_samples(recipe, run, step, pipe, seed):
    """OUT/samples/upscaler-STEP.png: 8 held-out scenes upscaled from size_cycle[0] px (64 -> 128), rows: the
    small picture (nearest x2), its bicubic upscale, the upscaler's, the VAE round trip of the large picture, the
    large picture; their PSNRs go to OUT/psnr.tsv."""
    ema = ema_pipeline(recipe, run, pipe, seed)
    h = held_out(ema, 8, recipe.size_cycle[0], seed)
    truth, bicubic, up, ceiling = h["truth"], h["bicubic"], h["upscaled"], h["vae"]
    nearest = F.interpolate(F.interpolate(truth, scale_factor=0.5, mode="area"), scale_factor=2, mode="nearest")
    save_grid(torch.cat([nearest, bicubic, up, ceiling, truth]), 8,
              Path(run.out) / "samples" / f"upscaler-{step:06d}.png", scale=1)
    figures = scores(h)
    path = Path(run.out) / "psnr.tsv"
    if not path.is_file():
        path.write_text("\t".join(["step", *figures]) + "\n")
    with path.open("a") as f:
        f.write("\t".join([str(step), *(f"{v:.2f}" for v in figures.values())]) + "\n")


# ---- the file ---------------------------------------------------------------------------------------------------
def write_upscaler_file(path, kunet, metadata=None):
    """The K-UNet's state dict (diffusers names, float16) with its diffusers config.json in the metadata."""
    from safetensors.torch import save_file

    from ..loading.configs import to_diffusers

    config = {"_class_name": "UNet2DConditionModel", **to_diffusers(kunet.config)}
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in kunet.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", "config": json.dumps(config), **(metadata or {})})


def train(recipe, out, *, stages=STAGES, seed=0, steps=None, batch=None, mixed_precision="bf16", progress=True,
          gradient_checkpointing=False, world=None):
    """The recipe (one stage) -> OUT/upscaler.safetensors. float32 whatever --mixed-precision (bf16 was measured
    slower here); gradient checkpointing is not implemented for the K-UNet (an error, not ignored)."""
    if gradient_checkpointing:
        raise ValueError("--gradient-checkpointing: not implemented for the K-UNet of --model tiny-upscaler")
    world = world or distributed.World()
    Path(out).mkdir(parents=True, exist_ok=True)
    pipe = train_upscaler(recipe, out, seed=seed, steps=steps, batch=batch, world=world, progress=progress)
    path = Path(out) / "upscaler.safetensors"
    if world.main:
        write_upscaler_file(path, pipe.unet, {"minunet.recipe": f"train-tiny --model tiny-upscaler seed {seed}"})
    world.barrier()
    return path
