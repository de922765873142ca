"""The tiny text-to-video recipe: a ModelScope-structure video UNet (minunet.models.video) on the frozen VAE and
text encoder of the shipped tiny image model, trained on clips of a shape moving in a direction (training.moving),
written as a ModelScope-layout single file of the video UNet alone (what load_unet reads for one file).

    minunet train-tiny --model tiny-video --out runs/tiny-video --threads 1   # -> runs/tiny-video/tiny-video.safetensors

One stage, "unet", as ModelScope's video model was made from SD 2.1: the spatial layers start as the shipped image
UNet's (the same names; its 1x1-conv attention projections are the video UNet's Linear ones, the same matrices),
the temporal layers as ModelScope's code starts them (each TemporalConvLayer's last conv and each temporal
transformer's proj_out zero, so each adds nothing at first), and everything trains on epsilon prediction with SD
1.5's noise schedule, min-SNR-5 weighting (below SNR 0.1 x0's error instead: at high noise, where the motion is
decided, epsilon's error hardly sees it) and 10% empty captions. The VAE latents of every clip and the text
features of every caption are computed once (the two are frozen). Step k's data and random draws are those of
tiny.py's rule (samples kB .. kB + B - 1, a generator seeded by (seed, stage, k)): resuming, or any number of
ranks, gives the same parameters.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.video import TemporalConvLayer, TransformerTemporalModel, VideoUNet, VideoUNetConfig
from . import distributed, moving
from .tiny import Run, Stage, epsilon_weight, save_grid, sd15_schedule, step_generator, train_loop

STAGE_NAME = "unet"


@dataclass(frozen=True)
class VideoRecipe:
    image_size: int
    frames: int
    unet: VideoUNetConfig
    stages: dict                 # {"unet": Stage}; the batch counts clips
    cache_size: int = 4096       # clips whose latents and caption features are computed once
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    high_noise_snr: float = 0.0  # > 0: below this SNR the loss weighs x0's error (weight high_noise_snr / SNR)
    data_seed_offset: int = 0    # the data set's seed is --seed + this


TINY_VIDEO = VideoRecipe(
    image_size=32, frames=8,
    # the image UNet's widths, one resnet per level, 8 heads of 16 (its 128-wide attention), its attention levels
    # (every spatial tensor copied): 13.7 MB, the four tiny files 49.3 MB of the 50 allowed. Measured (README): with
    # spatial attention in the middle block only (9.5 MB) one object in 65% of 48 clips, here 92%
    unet=VideoUNetConfig(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(False, True),
                         head_size=16, context_dim=64),
    stages={STAGE_NAME: Stage(steps=2100, batch=8, lr=1e-3, warmup=100, sample_every=200, checkpoint_every=200,
                              autocast=True)},  # bf16 autocast: 0.79 s a step vs 1.22 s in float32 (measured)
    high_noise_snr=0.1,
)
RECIPE, STAGES = TINY_VIDEO, (STAGE_NAME,)  # what `minunet train-tiny --model tiny-video` runs


# ---- the parts ---------------------------------------------------------------------------------------------
def base_pipeline():
    """The shipped tiny image model: its UNet starts the spatial layers, its VAE and text encoder stay frozen."""
    from ..pipelines.image import Pipeline

    return Pipeline.tiny()


def zero_temporal_outputs_(unet):
    """ModelScope's init: the last conv of every TemporalConvLayer and proj_out of every temporal transformer are
    zero (zero_module there; diffusers zeroes the conv only), so each temporal layer adds nothing until it trains:
    the video UNet starts as its spatial layers applied to each frame."""
    lasts = [m.conv4[-1] for m in unet.modules() if isinstance(m, TemporalConvLayer)]
    lasts += [m.proj_out for m in unet.modules() if isinstance(m, TransformerTemporalModel)]
    with torch.no_grad():
        for layer in lasts:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def copy_spatial_(unet, image_unet):
    """Copy every image-UNet tensor whose name the video UNet has, at the same shape (1x1-conv attention
    projections (O, I, 1, 1) as Linear weights (O, I)); -> the video UNet's names left as they were."""
    state, image = unet.state_dict(), image_unet.state_dict()
    copied = set()
    with torch.no_grad():
        for name, value in image.items():
            if name in state and value.ndim == 4 and state[name].ndim == 2:
                value = value[..., 0, 0]
            if name in state and value.shape == state[name].shape:
                state[name].copy_(value)
                copied.add(name)
    return sorted(set(state) - copied)


def build_unet(recipe, seed, image_unet=None):
    """The video UNet at its initial weights: random, temporal outputs zero, spatial layers from `image_unet`."""
    torch.manual_seed(seed + 2)
    unet = VideoUNet(recipe.unet)
    zero_temporal_outputs_(unet)
    if image_unet is not None:
        copy_spatial_(unet, image_unet)
    return unet


class VideoDenoiserLoss(nn.Module):
    """Epsilon MSE of the video UNet on frozen text features, min-SNR weighted (x0 MSE below high_noise_snr), per
    clip."""

    def __init__(self, unet, alphas_cumprod, min_snr, high_noise_snr=0.0):
        super().__init__()
        self.unet = unet
        self.register_buffer("abar", alphas_cumprod, persistent=False)
        self.min_snr, self.high_noise_snr = min_snr, high_noise_snr

    def forward(self, context, x0, t, eps):
        """context (b, 77, 64), x0 scaled latents (b, 4, F, h, w), t (b,) in [0, 1000), eps like x0 -> loss."""
        abar = self.abar[t][:, None, None, None, None]
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = self.unet(noisy, t, context).float()
        # min-SNR-gamma, and x0's error below high_noise_snr: a wrong motion costs epsilon's error almost nothing
        # at high noise (t=950: SNR 0.0083)
        weight = epsilon_weight(abar.flatten(), self.min_snr, self.high_noise_snr)
        return (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3, 4))).mean()


@torch.no_grad()
def clip_cache(recipe, vae, text, n, data_seed, chunk=32):
    """Scaled latents (n, 4, F, h, w) (posterior means) of clips 0 .. n-1, each clip's row in `features` and the
    text features (U, 77, width) of the distinct captions, row 0 the empty caption's."""
    from ..pipelines.video import unfold

    latents, rows, table = [], [], {"": 0}
    for start in range(0, n, chunk):
        clips, captions = moving.draw_clips(range(start, min(n, start + chunk)), data_seed, recipe.image_size,
                                            recipe.frames)
        z = vae.encode(clips.flatten(0, 1)).mean * vae.scaling_factor          # (b * F, 4, h, w)
        latents.append(unfold(z, recipe.frames))
        rows += [table.setdefault(c, len(table)) for c in captions]
    captions = list(table)
    features = torch.cat([text.encode(captions[i:i + 256], guidance=False).context
                          for i in range(0, len(captions), 256)])
    return torch.cat(latents), torch.tensor(rows), features


# ---- the stage ------------------------------------------------------------------------------------------------
def _stage(recipe, steps, batch):
    changes = {k: v for k, v in (("steps", steps), ("batch", batch)) if v is not None}
    return dataclasses.replace(recipe.stages[STAGE_NAME], **changes)


def _info(recipe, seed, stage, mixed_precision):
    """What a checkpoint must agree on to be resumed."""
    name = "tiny-video" if recipe == TINY_VIDEO else "custom"
    return {"recipe": name, "stage": STAGE_NAME, "seed": seed, "steps": stage.steps, "batch": stage.batch,
            "mixed_precision": mixed_precision}


def train_unet(recipe, out, *, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16", progress=True,
               base=None, gradient_checkpointing=False, stop_at=None):
    """Train (or resume) the video UNet on the frozen parts of `base` (default: the shipped tiny image pipeline);
    -> the video UNet with the EMA weights."""
    world = world or distributed.World()
    stage = _stage(recipe, steps, batch)
    base = base if base is not None else base_pipeline()
    unet = build_unet(recipe, seed, base.unet)
    if gradient_checkpointing:
        from ..models.checkpointing import set_gradient_checkpointing
        set_gradient_checkpointing(unet, True)
    loss = VideoDenoiserLoss(unet, sd15_schedule().alphas_cumprod(), recipe.min_snr, recipe.high_noise_snr)
    run = Run(STAGE_NAME, stage, loss, world, out, _info(recipe, seed, stage, mixed_precision))
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    data_seed = seed + recipe.data_seed_offset
    latents, rows, features = clip_cache(recipe, base.vae, base.text, min(recipe.cache_size, stage.steps * stage.batch),
                                         data_seed)
    part = world.shard(stage.batch)

    def batch_fn(step):
        idx = (torch.arange(stage.batch) + step * stage.batch) % len(latents)
        g = step_generator(seed, STAGE_NAME, step)
        t = torch.randint(0, len(loss.abar), (stage.batch,), generator=g)
        eps = torch.randn((stage.batch, *latents.shape[1:]), generator=g)
        drop = torch.rand(stage.batch, generator=g) < recipe.caption_dropout  # -> "" (the negative prompt of CFG)
        context = features[torch.where(drop, 0, rows[idx])]
        return tuple(v[part].to(world.device) for v in (context, latents[idx], t, eps))

    train_loop(run, batch_fn, lambda r, k: video_samples(recipe, r, k, base), progress, stop_at)
    return ema_unet(recipe, run)


def ema_unet(recipe, run):
    unet = VideoUNet(recipe.unet)
    unet.load_state_dict(run.ema_state("unet."))
    return unet.eval()


SAMPLE_PROMPTS = [moving.plain_caption(c, s, d, b) for c, s, d, b in
                  [("red", "circle", "right", "blue"), ("yellow", "square", "left", "black"),
                   ("green", "triangle", "up", "white"), ("purple", "circle", "down", "orange")]]


def pipeline(recipe, unet, base):
    """A VideoPipeline on the video UNet and the base pipeline's VAE, text encoder and schedule."""
    from ..pipelines.video import VideoPipeline

    return VideoPipeline(unet, base.vae, base.text, base.schedule, default_size=(recipe.image_size,) * 2,
                         default_frames=recipe.frames)


def video_samples(recipe, run, step, base):
    """OUT/samples/unet-STEP.png: one row of frames per SAMPLE_PROMPTS clip, EMA weights, DDIM 20 steps, seed 0."""
    pipe = pipeline(recipe, ema_unet(recipe, run), base)
    frames = pipe(SAMPLE_PROMPTS, num_inference_steps=20, generator=torch.Generator().manual_seed(0),
                  output_type="pt", progress=False).frames                    # (4, F, 3, H, W) in [0, 1]
    save_grid(frames.flatten(0, 1) * 2 - 1, recipe.frames, Path(run.out) / "samples" / f"unet-{step:06d}.png")


# ---- the file -------------------------------------------------------------------------------------------------
def write_video_file(path, unet, metadata=None):
    """The video UNet alone, ModelScope layout (bare keys, Conv1d temporal projections), float16."""
    from safetensors.torch import save_file

    from ..loading.video import original_state_dict

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in original_state_dict(unet).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", **(metadata or {})})


def train(recipe, out, *, stages=STAGES, seed=0, steps=None, batch=None, mixed_precision="bf16", progress=True,
          gradient_checkpointing=False, world=None):
    """The recipe's one stage, then OUT/tiny-video.safetensors."""
    world = world or distributed.World()
    Path(out).mkdir(parents=True, exist_ok=True)
    if STAGE_NAME not in stages:
        return None
    unet = train_unet(recipe, out, seed=seed, steps=steps, batch=batch, world=world, mixed_precision=mixed_precision,
                      progress=progress, gradient_checkpointing=gradient_checkpointing)
    path = Path(out) / "tiny-video.safetensors"
    if world.main:
        write_video_file(path, unet, {"minunet.recipe": f"train-tiny --model tiny-video seed {seed}"})
    world.barrier()
    return path
