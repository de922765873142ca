"""The tiny inpainting recipe: the 9-channel SD 1.x UNet of the inpainting checkpoints, made from the shipped tiny
image model the way runwayml made sd-v1-5-inpainting from SD 1.5, and written as one original-layout single file.

    minunet train-tiny --model tiny-inpainting --out runs/inpaint --threads 1   # -> runs/inpaint/model.safetensors

Start: the image model's UNet with conv_in widened from 4 to 9 input channels, the 5 new ones (mask, masked-image
latents) zero, so that at step 0 it computes the image UNet exactly (`widen_conv_in`). The image model's VAE and
text encoder are frozen and go into the file unchanged.
Data: picture i of the shapes data set (minunet.training.shapes) with its own rectangular mask (`draw_mask`): one
that covers the object wholly (its bounding box grown by random margins), one that covers part of it, one on the
background only, the whole picture, or any rectangle. The UNet's input is built as the pipeline builds it
(minunet.pipelines.inpaint): cat([noisy latents, latent mask, masked-image latents]), the latent mask by nearest
interpolation of the pixel mask, the masked image = the picture with the repainted pixels at 0 (mid-grey).
Loss: the image recipe's (epsilon MSE over the whole latent, min-SNR-5, 10% empty captions, SD 1.5's schedule);
latents, masks and masked-image latents of `cache_size` samples are encoded once (posterior means).
Every random draw of step k comes from a generator seeded by (seed, k) over the whole global batch, and step k
trains on cache entries kB .. kB + B - 1 (mod the cache), so resuming and N ranks give the same parameters.
"""
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import UNet
from ..pipelines import inpaint
from . import distributed, shapes, tiny
from .tiny import Stage

# kind of mask -> its share of the data set
MASK_KINDS = (("cover", 0.45), ("part", 0.2), ("elsewhere", 0.15), ("full", 0.1), ("any", 0.1))
COVER_MARGIN = 0.2      # each side of a covering mask lies 0 .. this fraction of the image beyond the object's box
MASK_SEED = 7_368_787   # mask i of data seed s: random.Random(s * 1_000_003 + i + MASK_SEED), apart from the picture's


@dataclass(frozen=True)
class InpaintRecipe:
    image_size: int
    stages: dict                 # {"inpaint": Stage}
    base: str | None = None      # the image model's single file; None: the shipped one (minunet.weights.TINY_MODEL)
    cache_size: int = 16384      # samples whose latents, masks and masked-image latents are encoded once
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    masks: tuple = MASK_KINDS
    data_seed_offset: int = 0    # the data set's seed is --seed + this


TINY_INPAINTING = InpaintRecipe(
    image_size=32,
    stages={"inpaint": Stage(steps=3000, batch=64, lr=5e-4, warmup=50, ema=0.995)},  # 1100: corner 70%
)
RECIPE, STAGES = TINY_INPAINTING, ("inpaint",)  # what `minunet train-tiny --model tiny-inpainting` runs


# ---- the masks ------------------------------------------------------------------------------------------------
def object_box(params, size):
    """The object's bounding box (y0, y1, x0, x1) in pixels (floats) of a picture `size` px wide."""
    half = params["size"] / 2
    return tuple(v * size for v in (params["cy"] - half, params["cy"] + half,
                                    params["cx"] - half, params["cx"] + half))


def _rect(rng, size, lo, hi):
    """A random rectangle (y0, y1, x0, x1), sides lo .. hi of the image, inside it."""
    h, w = (max(1, round(rng.uniform(lo, hi) * size)) for _ in range(2))
    y0, x0 = rng.randint(0, size - h), rng.randint(0, size - w)
    return y0, y0 + h, x0, x0 + w


def _overlap(rect, box):
    """Pixels of the pixel-rectangle `rect` inside the float box (0 when apart)."""
    dy = min(rect[1], box[1]) - max(rect[0], box[0])
    dx = min(rect[3], box[3]) - max(rect[2], box[2])
    return max(dy, 0) * max(dx, 0)


def _covers(rect, box):
    return rect[0] <= box[0] and rect[1] >= box[1] and rect[2] <= box[2] and rect[3] >= box[3]


def _cover(rng, box, size):
    margins = [rng.uniform(0, COVER_MARGIN * size) for _ in range(4)]
    y0, x0 = (max(0, int(box[i] - margins[i])) for i in (0, 2))
    y1, x1 = (min(size, -int(-(box[i] + margins[i]) // 1)) for i in (1, 3))  # ceil
    return y0, y1, x0, x1


def _tries(rng, size, lo, hi, accept, fallback, n=20):
    """The first of n random rectangles that `accept`s, else `fallback`."""
    for _ in range(n):
        rect = _rect(rng, size, lo, hi)
        if accept(rect):
            return rect
    return fallback


def draw_mask(index, seed, size=shapes.IMAGE_SIZE, kinds=MASK_KINDS):
    """(kind, (y0, y1, x0, x1)): the mask of sample `index` of data set `seed`, a rectangle of pixels
    [y0, y1) x [x0, x1) to repaint, about the sample's object (shapes.draw_params)."""
    rng = random.Random(seed * 1_000_003 + index + MASK_SEED)
    kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
    box = object_box(shapes.draw_params(index, seed), size)
    if kind == "cover":
        return kind, _cover(rng, box, size)
    if kind == "part":  # some of the object, not all of it (else: the left half of a covering mask)
        y0, y1, x0, _ = _cover(rng, box, size)
        accept = lambda r: _overlap(r, box) > 0 and not _covers(r, box)  # noqa: E731
        return kind, _tries(rng, size, 0.2, 0.6, accept, (y0, y1, x0, int(box[2] + box[3]) // 2))
    if kind == "elsewhere":  # background only (no room beside a large object: any rectangle)
        rect = _tries(rng, size, 0.15, 0.5, lambda r: _overlap(r, box) == 0, None)
        return ("elsewhere", rect) if rect is not None else ("any", _rect(rng, size, 0.1, 0.9))
    if kind == "full":
        return kind, (0, size, 0, size)
    return kind, _rect(rng, size, 0.1, 0.9)


def pixel_mask(rect, size):
    """(1, size, size) float mask, 1 inside the rectangle (repaint), 0 outside (keep)."""
    m = torch.zeros(1, size, size)
    y0, y1, x0, x1 = rect
    m[:, y0:y1, x0:x1] = 1
    return m


def draw_inpaint_batch(indices, seed=0, size=shapes.IMAGE_SIZE, kinds=MASK_KINDS):
    """Pictures (B, 3, size, size) in [-1, 1], captions, pixel masks (B, 1, size, size) and mask kinds."""
    images, captions = shapes.draw_batch(indices, seed, size)
    drawn = [draw_mask(int(i), seed, size, kinds) for i in indices]
    masks = torch.stack([pixel_mask(rect, size) for _, rect in drawn])
    return images, captions, masks, [kind for kind, _ in drawn]


@torch.no_grad()
def inpaint_cache(recipe, vae, n, data_seed, chunk=256):
    """Samples 0 .. n-1 as the UNet sees them: scaled latents (n, 4, h, w), latent masks (n, 1, h, w), scaled
    masked-image latents (n, 4, h, w) (posterior means) and token ids (n, 77); and the ids of ""."""
    tok, scale = tiny.tokenizer(), vae.config.scaling_factor
    parts = []
    for start in range(0, n, chunk):
        x, captions, m, _ = draw_inpaint_batch(range(start, min(n, start + chunk)), data_seed, recipe.image_size,
                                               recipe.masks)
        parts.append((vae.encode(x).mean * scale, inpaint.latent_mask(m, vae.config.downscale),
                      vae.encode(inpaint.masked_image(x, m)).mean * scale, tiny.token_ids(tok, captions)))
    latents, masks, masked, ids = (torch.cat(p) for p in zip(*parts))
    return latents, masks, masked, ids, tiny.token_ids(tok, [""])[0]


# ---- the model --------------------------------------------------------------------------------------------------
def load_base(recipe):
    """(image UNet, VAE, text encoder) of the image model's single file, float32."""
    from ..pipelines.image import Pipeline
    from ..weights import TINY_MODEL

    pipe = Pipeline.from_single_file(recipe.base if recipe.base is not None else TINY_MODEL, dtype=torch.float32)
    return pipe.unet.eval(), pipe.vae.eval(), pipe.text.encoders[0].eval()


def widen_conv_in(image_unet):
    """The 9-channel UNet of a 4-channel one: every weight copied, conv_in's 5 new input channels (mask,
    masked-image latents) zero, so it computes the image UNet exactly until training moves them."""
    unet = UNet(dataclasses.replace(image_unet.config, in_channels=9))
    state = image_unet.state_dict()
    w = state["conv_in.weight"]                                            # (C, 4, 3, 3)
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], 5, *w.shape[2:])], dim=1)  # (C, 9, 3, 3)
    unet.load_state_dict(state)
    return unet


class InpaintLoss(nn.Module):
    """The 9-channel UNet on the frozen text encoder's context: epsilon MSE, min-SNR weighted."""

    def __init__(self, unet, text, alphas_cumprod, min_snr):
        super().__init__()
        self.unet, self.text = unet, text.requires_grad_(False)
        self.register_buffer("abar", alphas_cumprod, persistent=False)
        self.min_snr = min_snr

    def forward(self, ids, x0, mask, masked, t, eps):
        """ids (b, 77), x0 / masked scaled latents (b, 4, h, w), mask (b, 1, h, w) 0/1, t (b,), eps like x0."""
        with torch.no_grad():
            context = self.text(ids).last_hidden_state  # (b, 77, width), as the image recipe
        abar = self.abar[t][:, None, None, None]
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = self.unet(inpaint.unet_input(noisy, mask, masked), t, context).float()
        weight = tiny.epsilon_weight(abar.flatten(), self.min_snr)  # min-SNR-gamma, as the image recipe
        return (weight * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()


def step_generator(seed, step):
    """Step k's generator: the image recipe's, on a seed range of its own (its stage names are the image
    recipe's)."""
    return tiny.step_generator(seed + 100_003, "unet", step)


# ---- the stage ------------------------------------------------------------------------------------------------
def _info(seed, stage, mixed_precision):
    """What a checkpoint must agree on to be resumed."""
    return {"recipe": "tiny-inpainting", "stage": "inpaint", "seed": seed, "steps": stage.steps,
            "batch": stage.batch, "mixed_precision": mixed_precision}


def train_inpaint(recipe, out, *, seed=0, steps=None, batch=None, world=None, mixed_precision="bf16", progress=True,
                  gradient_checkpointing=False, stop_at=None):
    """Train (or resume) the 9-channel UNet; -> (unet with the EMA weights, vae, text encoder)."""
    world = world or distributed.World()
    stage = tiny._stage(recipe, "inpaint", steps, batch)
    image_unet, vae, text = load_base(recipe)
    unet = widen_conv_in(image_unet)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    loss = InpaintLoss(unet, text, tiny.sd15_schedule().alphas_cumprod(), recipe.min_snr)
    run = tiny.Run("inpaint", stage, loss, world, out, _info(seed, stage, mixed_precision))
    run.autocast_ok = mixed_precision == "bf16"
    run.resume()
    data_seed = seed + recipe.data_seed_offset
    cache = inpaint_cache(recipe, vae, min(recipe.cache_size, stage.steps * stage.batch), data_seed)
    batch_fn = _batches(recipe, stage, cache, len(loss.abar), seed, world)
    tiny.train_loop(run, batch_fn, lambda r, k: inpaint_samples(recipe, r, k, vae, text), progress, stop_at)
    return ema_unet(run), vae, text


def _batches(recipe, stage, cache, timesteps, seed, world):
    """batch_fn(step) -> this rank's (ids, latents, masks, masked latents, t, eps) of step `step`."""
    latents, masks, masked, ids, empty = cache
    part = world.shard(stage.batch)

    def batch_fn(step):
        idx = (torch.arange(stage.batch) + step * stage.batch) % len(latents)
        g = step_generator(seed, step)
        t = torch.randint(0, timesteps, (stage.batch,), generator=g)
        eps = torch.randn((stage.batch, *latents.shape[1:]), generator=g)
        drop = torch.rand(stage.batch, generator=g) < recipe.caption_dropout  # -> "" (the negative prompt of CFG)
        tokens = torch.where(drop[:, None], empty, ids[idx])
        inputs = (tokens, latents[idx], masks[idx], masked[idx], t, eps)
        return tuple(v[part].to(world.device) for v in inputs)
    return batch_fn


def ema_unet(run):
    """The 9-channel UNet with the run's EMA weights."""
    unet = UNet(run.module.unet.config)
    unet.load_state_dict(run.ema_state("unet."))
    return unet.eval()


# ---- sample grids -----------------------------------------------------------------------------------------------
# (colour, shape, background) asked for in a plain picture of the background with a centred square hole
SAMPLE_CASES = [("red", "circle", "blue"), ("yellow", "square", "black"), ("green", "triangle", "white"),
                ("purple", "circle", "orange"), ("white", "square", "red"), ("blue", "triangle", "yellow"),
                ("orange", "circle", "green"), ("black", "triangle", "purple")]


def pipeline(recipe, unet, vae, text):
    """A minunet Pipeline on in-memory parts (sample grids; tests)."""
    from ..loading.text import TextConditioner
    from ..pipelines.image import Pipeline

    conditioner = TextConditioner("sd1", [text], [tiny.tokenizer()])
    return Pipeline(unet, vae, conditioner, tiny.sd15_schedule(), default_size=recipe.image_size)


def sample_inputs(size, cases=SAMPLE_CASES):
    """Plain pictures of each case's background (B, 3, size, size) in [0, 1], the mask (1, 1, size, size) of a
    centred square hole of side 3/4 of the picture (24 px of 32: whole latent cells), and the plain prompts."""
    rgb = torch.tensor([shapes.PALETTE[b] for _, _, b in cases], dtype=torch.float32) / 255    # (B, 3)
    images = rgb[:, :, None, None].expand(-1, -1, size, size).contiguous()
    lo, hi = size // 8, size - size // 8
    return images, pixel_mask((lo, hi, lo, hi), size)[None], [shapes.plain_caption(*case) for case in cases]


def inpaint_samples(recipe, run, step, vae, text, cases=SAMPLE_CASES):
    """OUT/samples/inpaint-STEP.png: the masked inputs (top) and the EMA UNet's fillings (bottom); Euler 20 steps,
    guidance 7.5, seed 0."""
    images, mask, prompts = sample_inputs(recipe.image_size, cases)
    out = pipeline(recipe, ema_unet(run), vae, text)(
        prompts, image=images, mask_image=mask.expand(len(cases), -1, -1, -1), num_inference_steps=20,
        generator=torch.Generator().manual_seed(0), output_type="pt", progress=False).images
    shown = images * (1 - mask) + 0.5 * mask
    tiny.save_grid(torch.cat([shown, out]) * 2 - 1, len(cases), Path(run.out) / "samples" / f"inpaint-{step:06d}.png")


# ---- the recipe -------------------------------------------------------------------------------------------------
def train(recipe, out, *, stages=STAGES, seed=0, steps=None, batch=None, mixed_precision="bf16", progress=True,
          gradient_checkpointing=False, world=None):
    """The recipe: the inpaint stage, then OUT/model.safetensors (UNet, VAE and text encoder, float16)."""
    world = world or distributed.World()
    Path(out).mkdir(parents=True, exist_ok=True)
    if "inpaint" not in stages:
        return None
    unet, vae, text = train_inpaint(recipe, out, seed=seed, steps=steps, batch=batch, world=world,
                                    mixed_precision=mixed_precision, progress=progress,
                                    gradient_checkpointing=gradient_checkpointing)
    path = Path(out) / "model.safetensors"
    if world.main:
        tiny.write_single_file(path, unet, vae, text, {"minunet.recipe": f"train-tiny --model tiny-inpainting "
                                                                          f"seed {seed}"})
    world.barrier()
    return path
