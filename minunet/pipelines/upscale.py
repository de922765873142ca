"""The x2 latent upscaler (stabilityai/sd-x2-latent-upscaler): SD latents or an image -> an image twice the size.

    pipe = Pipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cuda")
    up = UpscalePipeline.from_pretrained("stabilityai/sd-x2-latent-upscaler", revision="refs/pr/5", device="cuda")
    latents = pipe(prompt, generator=g, output_type="latent").images           # (B, 4, 64, 64): no VAE round trip
    image = up(prompt, image=latents, num_inference_steps=20, guidance_scale=0, generator=g).images[0]  # 1024 px

Arguments and defaults are diffusers' StableDiffusionLatentUpscalePipeline's (75 steps, guidance 9.0; its docstring
says 50 / 7.5, its code says 75 / 9.0). What one call does, as diffusers does it:
- text: CLIP ViT-L's last hidden state BEFORE the final LayerNorm (hidden_states[-1]) is the context; the pooled
  output (after the final norm, at the end token) goes into timestep_cond. guidance_scale == 0 replaces the prompt
  by "" (the documented examples use 0); guidance_scale > 1 adds the negative prompt ("" by default), order
  [negative, positive].
- image: a 4-channel tensor is taken as scaled SD latents; an RGB image (PIL, or a tensor in [0, 1]) is VAE-encoded,
  sampled with the generator (the first random draw) and scaled.
- conditioning at noise level 0: image_cond = nearest x2 upsampling of the latents; timestep_cond = [64 ones, 64
  zeros, pooled] (the noise level's Fourier embedding at 0: cos = 1, sin = 0).
- sigmas: log-linear from sigma_max to sigma_min, N + 1 values (N steps, the last ending at sigma_min ~ 0.029);
  start: randn(B, 4, 2h, 2w) (the second draw) * sigma_max.
- each step: Karras preconditioning with sigma_data = 1 (KarrasDenoiser), guidance on the denoised x0, an Euler
  step: the sampling path's Euler loop (minunet.schedulers SAMPLERS["euler"]) over this denoiser.
- decode latents / scaling factor.
Deliberate differences: a PIL image whose sides the fixed kernels cannot take is an error (diffusers resizes it
down to a multiple of 8 and then fails in the UNet for most sizes); a 3- or 5-channel latent tensor is an error;
latents are drawn and carried in float32 whatever the model dtype (as minunet's Pipeline).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..loading.io import looks_like_repo_id, read_json
from ..loading.text import CLIP_L_PAD, as_batch, load_encoder_folder, load_tokenizer, tokenize
from ..loading.unet import load_unet
from ..loading.vae import load_vae
from ..models.kunet import KUNet, KUNetConfig
from ..noise import check_generators, randn
from ..schedulers import SAMPLERS, Schedule, cfg_combine
from . import checks
from .common import UNetPipeline, check_output_type, fetch_pipeline, progress
from .images import from_pil, to_pil

NOISE_LEVEL_FEATURES = 64  # half of the noise-level embedding in timestep_cond: cos(0) = 1 x 64, sin(0) = 0 x 64
# UpscalePipeline.tiny()'s sampler settings (`--upscale tiny`'s defaults): the best PSNR on held-out scenes other
# than the tests' (benchmarks/tiny_upscaler.py --first 1000010000; README); guidance 1 = the prompt, no CFG
TINY_DEFAULTS = dict(num_inference_steps=3, guidance_scale=1.0)


@dataclass
class UpscaleOutput:
    images: list  # PIL images, or a (B, 3, H, W) tensor in [0, 1] for "pt", or latents for "latent"


class KarrasDenoiser:
    """The upscaler's denoiser in Euler / VE coordinates (x = x0 + sigma * eps), with the call signature of
    minunet.schedulers.Denoiser (denoiser(x, sigma) -> x0): Karras et al. 2022 preconditioning with sigma_data = 1,
    and classifier-free guidance on the denoised x0 (as diffusers' pipeline; the SD Denoiser guides the raw output
    instead, which is the same up to rounding for x0 affine in it).

        x0 = x / (sigma^2 + 1) + sigma / sqrt(sigma^2 + 1) * F(x / sqrt(sigma^2 + 1) ++ image_cond, log(sigma) / 4)

    model_fn(x_in, t) -> the UNet's (B, 5, H, W) output; its last channel is dropped."""

    def __init__(self, model_fn, image_cond, guidance_scale=1.0):
        self.model_fn, self.image_cond, self.guidance_scale = model_fn, image_cond, guidance_scale
        self.cfg = guidance_scale > 1.0

    def __call__(self, x, sigma):
        x = torch.cat([x, x]) if self.cfg else x  # rows [negative, positive]
        scale = (sigma**2 + 1) ** 0.5
        x_in = torch.cat([x / scale, self.image_cond.to(x)], dim=1)
        out = self.model_fn(x_in, torch.log(sigma) * 0.25)[:, :-1].float()
        x0 = 1 / (sigma**2 + 1) * x + sigma / scale * out
        if not self.cfg:
            return x0
        return cfg_combine(*x0.chunk(2), self.guidance_scale)


class UpscalePipeline(UNetPipeline):
    def __init__(self, unet, vae, text_encoder, tokenizer, schedule):
        if not isinstance(unet, KUNet):
            raise TypeError(f"UpscalePipeline needs the latent upscaler's KUNet, got {type(unet).__name__}")
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.schedule = unet, vae, text_encoder, tokenizer, schedule

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source, *, dtype=None, device=None, variant=None, revision=None):
        """A diffusers folder of StableDiffusionLatentUpscalePipeline (unet/, vae/, text_encoder/, tokenizer/,
        scheduler/) or a Hub repo id; `revision` picks a Hub ref (the official repo has safetensors only on
        "refs/pr/5", its main branch holds pickles, which are refused)."""
        folder = Path(source)
        if not folder.is_dir():
            if not looks_like_repo_id(source):
                raise CheckpointError(f"{source}: no such folder, and not a Hub repo id ('owner/name')")
            folder = fetch_pipeline(str(source), variant, revision)
        unet = load_unet(folder / "unet", dtype=dtype, device=device, variant=variant)
        if not isinstance(unet, KUNet):
            raise CheckpointError(f"{folder / 'unet'}: a {type(unet).__name__}, not the latent upscaler's K-UNet "
                                  "(down blocks KDownBlock2D / KCrossAttnDownBlock2D)")
        vae = load_vae(folder / "vae", dtype=dtype, device=device)
        text = load_encoder_folder(folder / "text_encoder", False, dtype=dtype, device=device, variant=variant)
        tokenizer = load_tokenizer(folder / "tokenizer", CLIP_L_PAD)
        sched = read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
        return cls(unet, vae, text, tokenizer, Schedule.from_config(sched))

    @classmethod
    def tiny(cls, *, dtype=None, device=None):
        """The tiny x2 upscaler trained by `minunet train-tiny --model tiny-upscaler` and shipped in the package:
        its K-UNet (weights/tiny/tiny-upscaler.safetensors) with the tiny image model's VAE, text encoder and
        tokenizer (Pipeline.tiny()). It upscales that model's latents of 32 or 64 px pictures (8 x 8 -> 16 x 16,
        16 x 16 -> 32 x 32); sampler defaults in TINY_DEFAULTS."""
        from ..loading.unet import load_kunet_file
        from ..weights import TINY_UPSCALER

        if not TINY_UPSCALER.is_file():
            raise CheckpointError(f"{TINY_UPSCALER}: the shipped tiny upscaler is missing from this installation")
        dtype = torch.float32 if dtype in (None, "auto") else dtype  # as Pipeline.tiny: bf16 gains nothing here
        return cls.with_tiny_parts(load_kunet_file(TINY_UPSCALER, dtype=dtype, device=device), dtype=dtype,
                                   device=device)

    @classmethod
    def with_tiny_parts(cls, unet, *, dtype=None, device=None):
        """`unet` (a KUNet) with the shipped tiny image model's VAE, text encoder and tokenizer, and the official
        upscaler's scheduler config (training and tiny())."""
        from .image import Pipeline
        from ..weights import CONFIGS

        parts = Pipeline.tiny(dtype=dtype, device=device)
        sched = read_json(CONFIGS / "sd-x2-latent-upscaler" / "scheduler" / "scheduler_config.json", "scheduler config")
        return cls(unet, parts.vae, parts.text.encoders[0], parts.text.tokenizers[0], Schedule.from_config(sched))

    @classmethod
    def tiny_random(cls, seed=0):
        """A small random-initialised upscaler built in memory from a fixed seed, for tests and timing: it runs
        anywhere in seconds and makes noise, not pictures. Its VAE has Pipeline.tiny_random()'s structure (x8)."""
        from transformers import CLIPTextModel

        from ..models.random_init import randomize_
        from ..loading.text import tiny_text_config
        from ..models.vae import VAE, VAEConfig
        from ..weights import CONFIGS

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text = randomize_(CLIPTextModel(tiny_text_config("sd1", width=64)), seed)
            unet = randomize_(KUNet(KUNetConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, head_size=16,
                                                context_dim=64, time_cond_dim=2 * NOISE_LEVEL_FEATURES + 64)), seed)
            vae = VAE(VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=128))
        sched = read_json(CONFIGS / "sd-x2-latent-upscaler" / "scheduler" / "scheduler_config.json", "scheduler config")
        return cls(unet.eval(), vae.eval(), text.eval(), load_tokenizer(None, CLIP_L_PAD), Schedule.from_config(sched))

    # ---- upscaling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt, image, num_inference_steps=75, guidance_scale=9.0, negative_prompt=None,
                 generator=None, latents=None, output_type="pil", callback=None, progress=True):
        """prompt (str or list), image (B, 4, h, w) SD latents, or RGB image(s) -> UpscaleOutput at 2x the size."""
        check_output_type(output_type, ("pil", "pt", "latent"))
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be an integer >= 1")
        prompts = as_batch(prompt, "prompt")
        batch, cfg = len(prompts), guidance_scale > 1.0
        if guidance_scale == 0:  # diffusers: no guidance and an empty prompt
            prompts = [""] * batch
        check_generators(generator, batch)
        self._check_image(image, batch)
        context, pooled = self.encode_prompt(prompts, as_batch(negative_prompt or "", "negative_prompt", batch), cfg)
        low = self._image_latents(image, generator)
        steps = self.schedule.steps(num_inference_steps, "euler")
        repeat = 2 if cfg else 1
        image_cond = F.interpolate(low.repeat(repeat, 1, 1, 1), scale_factor=2, mode="nearest")  # * 1 / sqrt(0 + 1)
        ones = torch.ones(pooled.shape[0], NOISE_LEVEL_FEATURES, dtype=pooled.dtype, device=pooled.device)
        timestep_cond = torch.cat([ones, torch.zeros_like(ones), pooled], dim=1)  # (B', 128 + pooled)
        shape = (batch, self.vae.config.latent_channels, 2 * low.shape[2], 2 * low.shape[3])
        x = self._start(latents, shape, generator) * steps.init_noise_sigma

        def model_fn(x_in, t):  # every output checked: a damaged weight is named at the first step
            out = self.unet(x_in.to(self.unet.dtype), t, context, timestep_cond=timestep_cond)
            return checks.finite_output(out, "upscaler UNet", self.unet.dtype, self.unet)

        denoiser = KarrasDenoiser(model_fn, image_cond.to(self.unet.dtype), guidance_scale)
        x = _run(denoiser, x, steps, callback, progress)
        if output_type == "latent":
            return UpscaleOutput(images=x)
        decoded = checks.finite_output(self.vae.decode(x / self.vae.scaling_factor), "VAE", self.vae.dtype, self.vae)
        if output_type == "pt":
            return UpscaleOutput(images=(decoded.float() * 0.5 + 0.5).clamp(0, 1))
        return UpscaleOutput(images=to_pil(decoded))

    def encode_prompt(self, prompts, negatives, cfg):
        """(context (B', 77, C) = last hidden state before the final norm, pooled (B', C)); B' = 2B with guidance,
        rows [negative, positive]."""
        texts = negatives + prompts if cfg else prompts
        ids = tokenize(self.tokenizer, texts, self.text_encoder.config.max_position_embeddings)
        out = self.text_encoder(ids.to(self.text_encoder.device), output_hidden_states=True)
        dev, dtype = self.device, self.unet.dtype
        return out.hidden_states[-1].to(dev, dtype), out.pooler_output.to(dev, dtype)

    def _check_image(self, image, batch):
        """image: SD latents (B, 4, h, w) or RGB images (tensor (B, 3, H, W) or PIL) of the prompts' batch, with
        sides the K-UNet's kernels take; checked before any model runs."""
        if isinstance(image, torch.Tensor):
            if image.ndim != 4 or image.shape[1] not in (3, self.vae.config.latent_channels):
                raise ValueError(f"image has shape {tuple(image.shape)}: pass SD latents (B, "
                                 f"{self.vae.config.latent_channels}, h, w), e.g. a Pipeline's output_type='latent', "
                                 "or RGB images (B, 3, H, W) in [0, 1]")
            n, (h, w), pixels = image.shape[0], image.shape[2:], image.shape[1] == 3
        else:
            first = image[0] if isinstance(image, (list, tuple)) and image else image
            if not hasattr(first, "size"):
                raise TypeError(f"image must be SD latents, an RGB tensor or PIL image(s), got {type(image).__name__}")
            n, (w, h), pixels = len(image) if isinstance(image, (list, tuple)) else 1, first.size, True
        if n != batch:
            raise ValueError(f"image has a batch of {n} but the prompt batch has {batch}: pass one image "
                             "(or latent) per prompt")
        self._check_size(h, w, self.vae.config.downscale if pixels else 1, "image" if pixels else "latents")

    def _image_latents(self, image, generator):
        """SD latents as given, or the VAE's posterior sample (the generator's first draw) * scaling factor."""
        if isinstance(image, torch.Tensor) and image.shape[1] != 3:
            return image.to(self.device, torch.float32)
        pixels = image * 2 - 1 if isinstance(image, torch.Tensor) else from_pil(image)
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype))
        return (posterior.sample(generator) * self.vae.scaling_factor).to(self.device, torch.float32)

    def _check_size(self, h, w, per_latent, what):
        """The K-UNet runs at 2x the latents and needs multiples of `downscale` (>= 2 x that): latents must be
        multiples of downscale / 2 and at least downscale (for the official model: 4 and 8; images 32 and 64 px)."""
        f = self.unet.config.downscale
        step, least = f // 2 * per_latent, f * per_latent
        if h % step or w % step or h < least or w < least:
            raise ValueError(f"{what} {h}x{w} (height x width): the upscaler's fixed down/up-sampling kernels need "
                             f"{what} sides that are multiples of {step} and at least {least}")

    def _start(self, latents, shape, generator):
        if latents is None:
            return randn(shape, generator, self.device)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape} (2x the image latents)")
        return latents.to(self.device, torch.float32)


def _run(denoiser, x, steps, callback, show):
    """The Euler loop with a progress bar; callback(i, t, latents) after step i may return latents to use."""
    with progress(len(steps.timesteps), show, [callback], desc="upscaling") as step:
        return SAMPLERS["euler"].loop(denoiser, x, steps, callback=step)
