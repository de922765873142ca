"""The tiny Stable Diffusion recipe: a VAE, then a UNet with its CLIP text encoder, trained on the shapes data set
(minunet.training.shapes) and written as one original-layout single file, nanoGPT's shakespeare_char for SD.

    minunet train-tiny --out runs/tiny                 # all the stages, then runs/tiny/model.safetensors
    torchrun --nproc_per_node 2 -m minunet train-tiny --out runs/tiny      # the same, data-parallel

Stage "vae": AutoencoderKL (minunet.VAE) on pixels, loss L1 + L2 + 1e-6 KL; at the end its latents are normalised
per channel (folded exactly into quant_conv / post_quant_conv, both 1x1 convs) so that latents * 0.18215 (SD's
scaling factor, which the single-file loader assumes) have mean 0 and std 1.
Stage "unet": the SD 1.x-structure UNet and a CLIP text encoder (transformers' CLIPTextModel, the shipped tokenizer)
trained together on epsilon prediction with SD 1.5's noise schedule, min-SNR-5 weighting and 10% empty captions
(so that classifier-free guidance works); the VAE is frozen and each sample's latents are computed once.
Every random draw of step k comes from a generator seeded by (seed, stage, k) over the whole global batch, and the
data of step k are samples k*B .. k*B + B - 1: resuming, or any number of ranks, gives the same parameters.
The weights kept are an exponential moving average (EMA) of the trained ones.
Stage "decoder" fine-tunes the VAE's decoder on the frozen encoder's latents; stage "refine" trains the unet stage's
EMA UNet on, on other pictures, at a lower rate, with the text encoder frozen.
"""
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import UNet, UNetConfig, VAE, VAEConfig
from . import distributed, shapes
from .state import load_state, save_state


@dataclass(frozen=True)
class Stage:
    steps: int
    batch: int          # global batch (all ranks together)
    lr: float
    warmup: int = 100   # linear warm-up steps, then cosine decay to lr / 10
    ema: float = 0.999  # EMA decay (ramped up over the first steps: min(ema, (1 + k) / (10 + k)))
    sample_every: int = 500
    checkpoint_every: int = 250
    autocast: bool = False  # bfloat16 autocast under --mixed-precision bf16 (measured faster for the VAE only)
    adam_eps: float = 1e-8


@dataclass(frozen=True)
class Recipe:
    """One model's parts and training; `RECIPES` holds them by --model name."""
    image_size: int
    vae: VAEConfig
    unet: UNetConfig
    text_width: int
    text_layers: int
    stages: dict                 # {"vae": Stage, "decoder": Stage, "unet": Stage}, run in this order
    cache_size: int = 16384      # samples whose latents and token ids the unet stage computes once
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    kl_weight: float = 1e-6
    data_seed_offset: int = 0    # the data set's seed is --seed + this


TINY = Recipe(
    image_size=32,
    # factor 4 (3 levels), 4 latent channels: factor 8 measured blurry in the time (README); 32 groups as every
    # official VAE (the single-file loader assumes it)
    vae=VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=32),
    # SD 1.x structure: 1x1-conv projections, 8 heads per level (what the loader assumes for this layout)
    unet=UNetConfig(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(False, True),
                    transformer_depth=(0, 1), num_heads=(8, 8), context_dim=64),
    text_width=64, text_layers=3,  # 1 head of 64 (the loader's rule: heads = width / 64)
    stages={"vae": Stage(steps=1500, batch=32, lr=1e-3, autocast=True),
            # the decoder alone, on the frozen encoder's latents (as sd-vae-ft-mse): sharper edges, same latents
            "decoder": Stage(steps=1000, batch=32, lr=5e-4, autocast=True),
            "unet": Stage(steps=2000, batch=64, lr=1e-3),
            # the unet stage's EMA UNet trained on, on other pictures, at a lower rate, the text encoder frozen
            # (measured: shapes right 66-68% -> 86-93% at guidance 3, README)
            "refine": Stage(steps=3000, batch=64, lr=3e-4)},
)
RECIPES = {"tiny": TINY}
RECIPE, STAGES = TINY, ("vae", "decoder", "unet", "refine")  # what `minunet train-tiny --model tiny` runs


# ---- the parts ---------------------------------------------------------------------------------------------
def build_vae(recipe, seed):
    torch.manual_seed(seed)
    vae = VAE(recipe.vae)
    with torch.no_grad():  # start with a small posterior std (log-variance -6): N(0, 1) noise would hide the mean
        vae.quant_conv.bias[recipe.vae.latent_channels:] = -6.0
    return vae


def build_text(recipe, seed):
    from transformers import CLIPTextModel

    from ..loading.text import tiny_text_config

    torch.manual_seed(seed + 1)
    config = tiny_text_config("sd1", width=recipe.text_width, layers=recipe.text_layers, head_size=64)
    return CLIPTextModel(config)


def build_unet(recipe, seed):
    torch.manual_seed(seed + 2)
    return UNet(recipe.unet)


def tokenizer():
    from ..loading.text import CLIP_L_PAD, load_tokenizer

    return load_tokenizer(None, CLIP_L_PAD)


def token_ids(tok, captions):
    from ..loading.text import tokenize

    return tokenize(tok, captions, 77)


# ---- losses (modules, so DDP can wrap them) -------------------------------------------------------------------
class VAELoss(nn.Module):
    def __init__(self, vae, kl_weight):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x, eps):
        """x (b, 3, H, W) in [-1, 1], eps (b, 4, h, w) -> L1 + L2 + kl_weight * KL (means over this shard)."""
        post = self.vae.encode(x)
        z = post.mean + post.std * eps.to(post.mean.dtype)
        y = self.vae.decode(z).float()
        mean, logvar = post.mean.float(), post.logvar.float()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        return (y - x).abs().mean() + (y - x).pow(2).mean() + self.kl_weight * kl


class DenoiserLoss(nn.Module):
    """The UNet and the text encoder trained together: epsilon MSE, min-SNR weighted."""

    def __init__(self, unet, text, alphas_cumprod, min_snr):
        super().__init__()
        self.unet, self.text = unet, text
        self.register_buffer("abar", alphas_cumprod, persistent=False)
        self.min_snr = min_snr

    def forward(self, ids, x0, t, eps):
        """ids (b, 77), x0 scaled latents (b, 4, h, w), t (b,) in [0, 1000), eps like x0 -> loss."""
        context = self.text(ids).last_hidden_state  # (b, 77, width): SD 1.x's last layer after final_layer_norm
        abar = self.abar[t][:, None, None, None]
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = self.unet(noisy, t, context).float()
        weight = epsilon_weight(abar.flatten(), self.min_snr)
        return (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()


def epsilon_weight(abar, min_snr, high_noise_snr=0.0):
    """Per-sample weights of an epsilon MSE, (b,) from alpha-bar (b,): min-SNR-gamma (Hang et al. 2023), min(SNR,
    min_snr) / SNR; with high_noise_snr > 0, below that SNR x0's error instead (epsilon's error holds x0's times the
    SNR, so at high noise it hardly sees what is decided there): the weight high_noise_snr / SNR."""
    snr = abar / (1 - abar)
    return snr.clamp(max=min_snr) / snr * (high_noise_snr / snr).clamp(min=1.0)


def sd15_schedule():
    from ..pipelines.image import schedule_from_file
    from ..weights import CONFIGS

    return schedule_from_file(CONFIGS / "stable-diffusion-v1-5" / "scheduler" / "scheduler_config.json")


# ---- the loop -------------------------------------------------------------------------------------------------
STAGE_SEEDS = {"vae": 0, "decoder": 250_007, "unet": 500_009, "refine": 750_011}


def step_generator(seed, stage, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGE_SEEDS[stage] + step)


def lr_at(stage, step):
    warm = min(1.0, (step + 1) / stage.warmup)
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / stage.steps))
    return stage.lr * warm * cosine


class Run:
    """One stage's training: the module (DDP-wrapped when several ranks), its AdamW, EMA, log and checkpoints."""

    def __init__(self, name, stage, loss_module, world, out, info):
        self.name, self.stage, self.world, self.out = name, stage, world, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.module = loss_module.to(world.device)
        self.params = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        self.ema = {n: p.detach().clone() for n, p in self.params.items()}
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=stage.lr, betas=(0.9, 0.99),
                                     eps=stage.adam_eps, weight_decay=0.0)
        self.ddp = distributed.wrap(self.module, world)
        self.info, self.step = info, 0

    @property
    def checkpoint(self):
        return self.out / f"{self.name}-state.safetensors"

    def resume(self):
        if distributed.broadcast_flag(self.checkpoint.is_file(), self.world):
            self.step = load_state(self.checkpoint, self.params, self.ema, self.opt, self.info)
        return self.step

    def update(self, *inputs, autocast=False):
        """One optimiser step on this rank's shard; -> the loss (this rank's)."""
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.stage, self.step)
        with torch.autocast(self.world.device.type, torch.bfloat16, enabled=autocast):
            loss = self.ddp(*inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self):
        decay = min(self.stage.ema, (1 + self.step) / (10 + self.step))
        for n, p in self.params.items():
            self.ema[n].lerp_(p.detach(), 1 - decay)

    def save(self):
        if self.world.main:
            save_state(self.checkpoint, self.step, self.params, self.ema, self.opt, self.info)
        self.world.barrier()

    def ema_state(self, prefix):
        """{name under `prefix` without it: EMA tensor} (e.g. prefix "unet." -> the UNet's state dict)."""
        return {n[len(prefix):]: v for n, v in self.ema.items() if n.startswith(prefix)}


def log_line(out, stage, step, loss, lr, seconds):
    path = Path(out) / "loss.tsv"
    if not path.is_file():
        path.write_text("stage\tstep\tloss\tlr\tseconds\n")
    with path.open("a") as f:
        f.write(f"{stage}\t{step}\t{loss:.6f}\t{lr:.3e}\t{seconds:.1f}\n")


def train_loop(run, batch_fn, sample_fn, progress, stop_at=None):
    """Steps run.step .. stage.steps - 1 (or stop_at - 1, checkpointed there: tests of resuming): batch_fn(step)
    -> the shard's inputs; rank 0 logs every 10 steps, checkpoints and draws samples on the stage's schedule."""
    from tqdm import tqdm

    stage, world = run.stage, run.world
    start = time.perf_counter()
    with tqdm(total=stage.steps, initial=run.step, desc=f"train {run.name}", disable=not (progress and world.main),
              dynamic_ncols=True) as bar:
        while run.step < (stage.steps if stop_at is None else min(stop_at, stage.steps)):
            loss = run.update(*batch_fn(run.step), autocast=stage.autocast and run.autocast_ok)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            k = run.step
            if world.main and (k % 10 == 0 or k == stage.steps):
                log_line(run.out, run.name, k, loss, lr_at(stage, k - 1), time.perf_counter() - start)
            if k % stage.checkpoint_every == 0 or k == stage.steps or k == stop_at:
                run.save()
            if world.main and sample_fn is not None and (k % stage.sample_every == 0 or k == stage.steps):
                sample_fn(run, k)


# ---- stage 1: the VAE -----------------------------------------------------------------------------------------
def train_vae(recipe, out, *, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16", progress=True,
              stop_at=None):
    """Train (or resume) the VAE stage; writes OUT/vae.safetensors (diffusers layout, EMA weights, latents
    normalised) and returns the VAE."""
    world = world or distributed.World()
    stage = _stage(recipe, "vae", steps, batch)
    vae = build_vae(recipe, seed)
    info = _info(recipe, "vae", seed, stage, mixed_precision)
    run = Run("vae", stage, VAELoss(vae, recipe.kl_weight), world, out, info)
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    part = world.shard(stage.batch)
    latent = (recipe.vae.latent_channels, recipe.image_size // recipe.vae.downscale, recipe.image_size // recipe.vae.downscale)
    data_seed = seed + recipe.data_seed_offset

    def batch_fn(step):
        x, _ = shapes.draw_batch(range(step * stage.batch, (step + 1) * stage.batch), data_seed, recipe.image_size)
        eps = torch.randn((stage.batch, *latent), generator=step_generator(seed, "vae", step))
        return x[part].to(world.device), eps[part].to(world.device)

    train_loop(run, batch_fn, lambda r, k: vae_samples(recipe, r, k, data_seed), progress, stop_at)
    final = build_vae(recipe, seed)
    final.load_state_dict(run.ema_state("vae."))
    normalise_latents_(final, recipe, data_seed)
    if world.main:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in final.state_dict().items()}, str(Path(out) / "vae.safetensors"))
    world.barrier()
    return final.eval()


VALIDATION_START = 10 ** 9  # data indices of held-out pictures (training never reaches them)
DECODER_DATA_START = 10 ** 8  # the decoder stage's pictures: others than the VAE stage's


class DecoderLoss(nn.Module):
    """The decoder (and post_quant_conv) on the frozen encoder's posterior samples: L1 + L2."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        for m in (vae.encoder, vae.quant_conv):
            m.requires_grad_(False)

    def forward(self, x, eps):
        with torch.no_grad():
            post = self.vae.encode(x)
            z = post.mean + post.std * eps.to(post.mean.dtype)
        y = self.vae.decode(z).float()
        return (y - x).abs().mean() + (y - x).pow(2).mean()


def train_decoder(recipe, out, *, vae=None, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16",
                  progress=True, stop_at=None):
    """Train (or resume) the decoder stage from the VAE stage's output (given, or OUT/vae.safetensors); writes
    OUT/decoder.safetensors (the whole VAE, EMA decoder) and returns the VAE. The latents are unchanged."""
    world = world or distributed.World()
    stage = _stage(recipe, "decoder", steps, batch)
    vae = vae if vae is not None else load_stage_vae(recipe, out, "vae")
    start = {k: v.clone() for k, v in vae.state_dict().items()}
    run = Run("decoder", stage, DecoderLoss(vae.train()), world, out, _info(recipe, "decoder", seed, stage,
                                                                           mixed_precision))
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    part = world.shard(stage.batch)
    h = recipe.image_size // recipe.vae.downscale
    data_seed = seed + recipe.data_seed_offset

    def batch_fn(step):
        first = DECODER_DATA_START + step * stage.batch
        x, _ = shapes.draw_batch(range(first, first + stage.batch), data_seed, recipe.image_size)
        eps = torch.randn((stage.batch, recipe.vae.latent_channels, h, h), generator=step_generator(seed, "decoder", step))
        return x[part].to(world.device), eps[part].to(world.device)

    train_loop(run, batch_fn, lambda r, k: vae_samples(recipe, r, k, data_seed, start), progress, stop_at)
    final = VAE(recipe.vae)
    final.load_state_dict({**start, **run.ema_state("vae.")})
    if world.main:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in final.state_dict().items()}, str(Path(out) / "decoder.safetensors"))
    world.barrier()
    return final.eval()


@torch.no_grad()
def vae_psnr(vae, recipe, data_seed, n=256):
    """Mean PSNR (dB, pixels in [0, 1]) of encode (posterior mean) -> decode over n held-out pictures."""
    x, _ = shapes.draw_batch(range(VALIDATION_START, VALIDATION_START + n), data_seed, recipe.image_size)
    y = vae.decode(vae.encode(x).mean).clamp(-1, 1)
    mse = ((y - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((-10 * torch.log10(mse.clamp(min=1e-10))).mean())


@torch.no_grad()
def normalise_latents_(vae, recipe, data_seed, n=1024):
    """Make latents * scaling_factor have per-channel mean 0 and std 1 on the data set, exactly: the posterior
    mean is quant_conv's first channels (scaled by s, shifted by -s * m, log-variance + 2 ln s) and
    post_quant_conv (1x1) reads z = z' / s + m."""
    x, _ = shapes.draw_batch(range(VALIDATION_START + n, VALIDATION_START + 2 * n), data_seed, recipe.image_size)
    z = torch.cat([vae.encode(c).mean for c in x.split(128)])
    m, sd = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    s = 1 / (sd * recipe.vae.scaling_factor)            # (C,)
    L = recipe.vae.latent_channels
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:L] *= s[:, None, None, None]
    q.bias[:L] = (q.bias[:L] - m) * s
    q.bias[L:] += 2 * torch.log(s)
    p.bias += (p.weight[:, :, 0, 0] * m).sum(dim=1)
    p.weight /= s[None, :, None, None]


def vae_samples(recipe, run, step, data_seed, frozen=None):
    """OUT/samples/NAME-STEP.png: held-out pictures (top) and their reconstructions with the EMA weights (bottom);
    `frozen`: the state dict the run's EMA parameters update (the decoder stage)."""
    vae = build_vae(recipe, 0)
    vae.load_state_dict({**(frozen or {}), **run.ema_state("vae.")})
    x, _ = shapes.draw_batch(range(VALIDATION_START, VALIDATION_START + 8), data_seed, recipe.image_size)
    with torch.no_grad():
        y = vae.eval().decode(vae.encode(x).mean).clamp(-1, 1)
    save_grid(torch.cat([x, y]), 8, Path(run.out) / "samples" / f"{run.name}-{step:06d}.png")


def save_grid(images, columns, path, scale=2):
    """(N, 3, H, W) in [-1, 1] -> one PNG, nearest-neighbour enlarged `scale` times."""
    from ..pipelines.images import to_pil

    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * h, columns * w), -1.0)
    for i, im in enumerate(images):
        r, k = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, k * w:(k + 1) * w] = im
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid)[0].save(path)


def _stage(recipe, name, steps, batch):
    stage = recipe.stages[name]
    changes = {k: v for k, v in (("steps", steps), ("batch", batch)) if v is not None}
    return dataclasses.replace(stage, **changes)


def _info(recipe, name, seed, stage, mixed_precision):
    """What a checkpoint must agree on to be resumed."""
    name_of = next((k for k, v in RECIPES.items() if v == recipe), "custom")
    return {"recipe": name_of, "stage": name, "seed": seed, "steps": stage.steps, "batch": stage.batch,
            "mixed_precision": mixed_precision}


# ---- stage 2: the UNet and the text encoder -------------------------------------------------------------------
def train_unet(recipe, out, *, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16", progress=True,
               vae=None, gradient_checkpointing=False, stop_at=None):
    """Train (or resume) the UNet + text stage on the frozen VAE (given, or OUT/vae.safetensors: the decoder stage
    does not change the encoder, so this stage can run beside it); -> (unet, text) with the EMA weights."""
    world = world or distributed.World()
    stage = _stage(recipe, "unet", steps, batch)
    vae = vae if vae is not None else load_stage_vae(recipe, out, "vae")
    text, unet = build_text(recipe, seed), build_unet(recipe, seed)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    loss = DenoiserLoss(unet, text, sd15_schedule().alphas_cumprod(), recipe.min_snr)
    run = Run("unet", stage, loss, world, out, _info(recipe, "unet", seed, stage, mixed_precision))
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    batch_fn = denoiser_batches(recipe, run, vae, seed, data_start=0)
    train_loop(run, batch_fn, lambda r, k: unet_samples(recipe, r, k, vae), progress, stop_at)
    return ema_models(recipe, run, seed)


def denoiser_batches(recipe, run, vae, seed, data_start):
    """batch_fn(step) of a denoiser stage: cached latents and ids of samples data_start .. data_start + n - 1 in
    turn, and timesteps, noise and caption dropout drawn from the step's generator over the global batch."""
    stage, world = run.stage, run.world
    n = min(recipe.cache_size, stage.steps * stage.batch)
    latents, ids, empty = latent_cache(recipe, vae, n, seed + recipe.data_seed_offset, start=data_start)
    part, steps = world.shard(stage.batch), len(run.module.abar)

    def batch_fn(step):
        idx = (torch.arange(stage.batch) + step * stage.batch) % len(latents)
        g = step_generator(seed, run.name, step)
        t = torch.randint(0, steps, (stage.batch,), generator=g)
        eps = torch.randn((stage.batch, *latents.shape[1:]), generator=g)
        drop = torch.rand(stage.batch, generator=g) < recipe.caption_dropout  # -> "" (the negative prompt of CFG)
        tokens = torch.where(drop[:, None], empty, ids[idx])
        return tuple(v[part].to(world.device) for v in (tokens, latents[idx], t, eps))

    return batch_fn


def ema_models(recipe, run, seed, text_state=None):
    """(unet, text) with the run's EMA weights; text_state: the text encoder's when the run froze it."""
    text, unet = build_text(recipe, seed), build_unet(recipe, seed)
    text.load_state_dict(text_state if text_state is not None else run.ema_state("text."))
    unet.load_state_dict(run.ema_state("unet."))
    return unet.eval(), text.eval()


# ---- stage 3: refine the UNet, the text encoder frozen ---------------------------------------------------------
REFINE_DATA_START = 2 * 10 ** 8  # the refine stage's pictures: others than the unet stage's


def unet_stage_result(recipe, out, seed):
    """(unet, text) with the EMA weights the unet stage saved in OUT/unet-state.safetensors (its last step)."""
    from ..errors import CheckpointError
    from ..loading.io import load_safetensors

    path = Path(out) / "unet-state.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found: the refine stage needs the unet stage's result (run --stage unet "
                              "first, or --stage all)")
    state = load_safetensors(path)
    text, unet = build_text(recipe, seed), build_unet(recipe, seed)
    text.load_state_dict({k[len("ema.text."):]: v for k, v in state.items() if k.startswith("ema.text.")})
    unet.load_state_dict({k[len("ema.unet."):]: v for k, v in state.items() if k.startswith("ema.unet.")})
    return unet, text


def train_refine(recipe, out, *, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16", progress=True,
                 vae=None, gradient_checkpointing=False, stop_at=None):
    """Train (or resume) the refine stage from the unet stage's EMA UNet, its text encoder frozen; -> (unet, text)."""
    world = world or distributed.World()
    stage = _stage(recipe, "refine", steps, batch)
    vae = vae if vae is not None else load_stage_vae(recipe, out, "vae")
    unet, text = unet_stage_result(recipe, out, seed)
    text.requires_grad_(False)
    text_state = {k: v.clone() for k, v in text.state_dict().items()}
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    loss = DenoiserLoss(unet, text.eval(), sd15_schedule().alphas_cumprod(), recipe.min_snr)
    run = Run("refine", stage, loss, world, out, _info(recipe, "refine", seed, stage, mixed_precision))
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    batch_fn = denoiser_batches(recipe, run, vae, seed, data_start=REFINE_DATA_START)
    train_loop(run, batch_fn, lambda r, k: unet_samples(recipe, r, k, vae, text_state), progress, stop_at)
    return ema_models(recipe, run, seed, text_state)


def load_stage_vae(recipe, out, name="decoder"):
    """The VAE a stage wrote: OUT/vae.safetensors (VAE stage) or OUT/decoder.safetensors (decoder stage)."""
    from ..errors import CheckpointError
    from ..loading.io import load_safetensors

    path = Path(out) / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found: the next stage needs the {name} stage's output (run --stage "
                              f"{name} first, or --stage all)")
    vae = VAE(recipe.vae)
    vae.load_state_dict(load_safetensors(path))
    return vae.eval()


@torch.no_grad()
def latent_cache(recipe, vae, n, data_seed, chunk=256, start=0):
    """Scaled latents (n, 4, h, w) (posterior means) and token ids (n, 77) of samples start .. start + n - 1, and
    the ids of ""."""
    tok = tokenizer()
    latents, ids = [], []
    for first in range(start, start + n, chunk):
        x, captions = shapes.draw_batch(range(first, min(start + n, first + chunk)), data_seed, recipe.image_size)
        latents.append(vae.encode(x).mean * recipe.vae.scaling_factor)
        ids.append(token_ids(tok, captions))
    return torch.cat(latents), torch.cat(ids), token_ids(tok, [""])[0]


SAMPLE_PROMPTS = [shapes.plain_caption(c, s, b) for c, s, b in
                  [("red", "circle", "blue"), ("yellow", "square", "black"), ("green", "triangle", "white"),
                   ("purple", "circle", "orange"), ("white", "square", "red"), ("blue", "triangle", "yellow"),
                   ("orange", "circle", "green"), ("black", "triangle", "purple")]]


def pipeline(recipe, unet, vae, text):
    """A minunet Pipeline on in-memory parts (the sample grids; tests)."""
    from ..pipelines.image import Pipeline
    from ..loading.text import TextConditioner

    conditioner = TextConditioner("sd1", [text], [tokenizer()])
    return Pipeline(unet, vae, conditioner, sd15_schedule(), default_size=recipe.image_size)


def unet_samples(recipe, run, step, vae, text_state=None):
    """OUT/samples/NAME-STEP.png: SAMPLE_PROMPTS with the EMA weights, Euler 20 steps, guidance 7.5, seed 0."""
    unet, text = ema_models(recipe, run, 0, text_state)
    pipe = pipeline(recipe, unet, vae, text)
    images = pipe(SAMPLE_PROMPTS, num_inference_steps=20, generator=torch.Generator().manual_seed(0),
                  output_type="pt", progress=False).images
    save_grid(images * 2 - 1, 8, Path(run.out) / "samples" / f"{run.name}-{step:06d}.png")


# ---- the single file --------------------------------------------------------------------------------------------
def single_file_state(unet, vae, text, dtype=torch.float16):
    """{original single-file name: tensor}: `model.diffusion_model.*`, `first_stage_model.*`,
    `cond_stage_model.transformer.text_model.*`, as an official SD 1.x checkpoint names them."""
    from .. import original_state_dict
    from ..keymaps.vae import PREFIX as VAE_PREFIX, diffusers_to_original
    from ..loading.text import SPECS, file_names

    state = dict(original_state_dict(unet))
    cfg = vae.config
    vae_state = diffusers_to_original(vae.state_dict(), len(cfg.block_out_channels), cfg.layers_per_block)
    state.update({VAE_PREFIX + k: v for k, v in vae_state.items()})
    prefix = SPECS["sd1"][0].prefix
    state.update({prefix + k: v for k, v in file_names(text).items() if not k.endswith("position_ids")})
    return {k: v.detach().to(dtype).contiguous() for k, v in state.items()}


def write_single_file(path, unet, vae, text, metadata=None):
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_state(unet, vae, text), str(path), metadata={"format": "pt", **(metadata or {})})


def train(recipe, out, *, stages=STAGES, seed=0, steps=None, batch=None, mixed_precision="bf16",
          progress=True, gradient_checkpointing=False, world=None):
    """The recipe: the stages asked for, then OUT/model.safetensors when the recipe's last stage ran."""
    world = world or distributed.World()
    Path(out).mkdir(parents=True, exist_ok=True)
    common = dict(seed=seed, steps=steps, batch=batch, world=world, mixed_precision=mixed_precision,
                  progress=progress)
    # each stage reads the previous one's file (not the module in memory), so `--stage all` and stages run one by
    # one (or decoder and unet side by side: the unet stage needs the encoder only) give the same bits
    if "vae" in stages:
        train_vae(recipe, out, **common)
    if "decoder" in stages:
        train_decoder(recipe, out, **common)
    models = {"unet": train_unet, "refine": train_refine}
    for name in [n for n in models if n in stages and n in recipe.stages]:
        unet, text = models[name](recipe, out, gradient_checkpointing=gradient_checkpointing, **common)
    if list(recipe.stages)[-1] not in stages:
        return None
    vae = load_stage_vae(recipe, out, "decoder" if "decoder" in recipe.stages else "vae")
    path = Path(out) / "model.safetensors"
    if world.main:
        write_single_file(path, unet, vae, text, {"minunet.recipe": f"train-tiny seed {seed}"})
    world.barrier()
    return path
