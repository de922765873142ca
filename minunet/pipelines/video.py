"""From prompt to video with minunet's video UNet, samplers and VAE: diffusers' TextToVideoSDPipeline, with its
argument names and defaults.

    pipe = VideoPipeline.from_pretrained("ali-vilab/text-to-video-ms-1.7b", dtype=torch.float16, device="cuda")
    frames = pipe("a panda surfing", generator=torch.Generator().manual_seed(0)).frames[0]   # (16, 256, 256, 3)
    minunet.export_video(frames, "panda.mp4", fps=8)

The algorithm (diffusers 0.42.1, ../shared/notes/video.md): the prompt and negative through the one OpenCLIP-H text
encoder as SD 2.x; latents (B, 4, F, H/8, W/8) from one randn call; each step runs the UNet on the CFG batch
[negative, positive] and the sampler steps on the frames folded into the batch, (B*F, 4, h, w), so its random
draws are diffusers'; the frames are decoded by the image VAE, `decode_chunk_size` frames per call (the result does
not depend on it; the memory does).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from ..errors import CheckpointError
from ..loading.io import looks_like_repo_id, read_json
from ..loading.text import TextConditioner
from ..loading.unet import load_unet
from ..loading.vae import load_vae
from ..models.deepcache import start_run
from ..models.random_init import randomize_
from ..models.video import VideoUNet
from ..noise import randn
from ..schedulers import SAMPLERS, Schedule, guided, sample
from ..weights import CONFIGS
from . import checks
from .common import UNetPipeline, check_output_type, check_sampler, fetch_pipeline, progress
from .images import to_pil

OUTPUT_TYPES = ("np", "pil", "pt", "latent")


@dataclass
class VideoPipelineOutput:
    """frames: "np" (B, F, H, W, 3) float32 in [0, 1]; "pt" (B, F, 3, H, W) in [0, 1]; "pil" B lists of F images;
    "latent" the final latents (B, 4, F, H/8, W/8)."""
    frames: object


class VideoPipeline(UNetPipeline):
    def __init__(self, unet, vae, text, schedule, *, default_size=(256, 256), default_frames=16):
        if not isinstance(unet, VideoUNet):
            raise CheckpointError(f"VideoPipeline needs a video UNet (UNet3DConditionModel), got {type(unet).__name__}")
        if text.context_dim != unet.config.context_dim:
            raise CheckpointError(f"the text encoder gives {text.context_dim}-wide tokens, the UNet reads "
                                  f"{unet.config.context_dim}")
        self.unet, self.vae, self.text, self.schedule = unet, vae, text, schedule
        self.default_size = default_size  # (height, width): unet.sample_size * 8 as diffusers
        self.default_frames = default_frames  # num_frames when not given: 16 as diffusers; the tiny model 8
        self.vae_scale = vae.config.downscale

    @classmethod
    def from_pretrained(cls, source, *, dtype=None, device=None, variant=None):
        """A diffusers TextToVideoSDPipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), or a Hub
        repo id of one (ali-vilab/text-to-video-ms-1.7b; zeroscope's safetensors: see the README)."""
        folder = Path(source)
        if not folder.is_dir():
            if not looks_like_repo_id(source):
                raise CheckpointError(f"{source}: no such folder, and not a Hub repo id ('owner/name')")
            folder = fetch_pipeline(str(source), variant)
        for sub in ("unet", "vae", "scheduler"):
            if not (folder / sub).is_dir():
                raise CheckpointError(f"{folder}: not a diffusers text-to-video folder (no {sub}/)")
        unet = load_unet(folder / "unet", dtype=dtype, device=device, variant=variant)
        vae = load_vae(folder / "vae", dtype=dtype, device=device)
        text = TextConditioner.from_pretrained(folder, dtype=dtype, device=device, variant=variant)
        sched = read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
        size = read_json(folder / "unet" / "config.json", "UNet config").get("sample_size") or 32
        pixels = size * vae.config.downscale
        return cls(unet, vae, text, Schedule.from_config(sched), default_size=(pixels, pixels))

    @classmethod
    def tiny(cls, *, dtype=None, device=None):
        """The tiny text-to-video model trained by `minunet train-tiny --model tiny-video` and shipped in the
        package: clips of one plain shape moving in a direction, "a red circle moving to the right on a blue
        background", 8 frames of 32 x 32 px. Its file holds the video UNet alone (ModelScope layout, read by
        load_unet like any single file); the VAE, text encoder and noise schedule are the tiny image model's
        (Pipeline.tiny()), which it was trained on."""
        from ..weights import TINY_SIZE, TINY_VIDEO_FRAMES, TINY_VIDEO_MODEL
        from .image import Pipeline

        if not TINY_VIDEO_MODEL.is_file():
            raise CheckpointError(f"{TINY_VIDEO_MODEL}: the shipped tiny video model is missing from this installation")
        image = Pipeline.tiny(dtype=dtype, device=device)
        unet = load_unet(TINY_VIDEO_MODEL, dtype=image.unet.dtype, device=device).eval()
        return cls(unet, image.vae, image.text, image.schedule, default_size=(TINY_SIZE, TINY_SIZE),
                   default_frames=TINY_VIDEO_FRAMES)

    @classmethod
    def tiny_random(cls, seed=0):
        """A small random-weight video pipeline built in memory from a fixed seed: it runs anywhere in seconds and
        makes noise, not videos."""
        from ..models.vae import VAE, VAEConfig
        from ..models.video import VideoUNetConfig

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text = TextConditioner.tiny("sd2", seed=seed)
            unet = VideoUNet(VideoUNetConfig(block_out_channels=(32, 64), attention_levels=(True, False),
                                             layers_per_block=1, head_size=16, context_dim=text.context_dim)).eval()
            randomize_(unet, seed)  # no zero-initialised temporal conv: every temporal layer acts
            vae = VAE(VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64)).eval()
        sched = read_json(CONFIGS / "text-to-video-ms-1.7b" / "scheduler" / "scheduler_config.json", "scheduler config")
        return cls(unet, vae, text, Schedule.from_config(sched), default_size=(64, 64))  # 8 x 8 latents

    # ---- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt, height=None, width=None, num_frames=None, num_inference_steps=50, guidance_scale=9.0,
                 negative_prompt=None, eta=0.0, generator=None, latents=None, output_type="np", clip_skip=None,
                 sampler="ddim", decode_chunk_size=8, callback=None, progress=True):
        num_frames = self.default_frames if num_frames is None else num_frames
        height, width = self._check(height, width, num_frames, output_type, sampler, decode_chunk_size)
        cfg = guidance_scale > 1.0
        context = self._context(prompt, negative_prompt, cfg, clip_skip)
        batch = context.shape[0] // (2 if cfg else 1)
        shape = (batch, self.unet.config.in_channels, num_frames, height // self.vae_scale, width // self.vae_scale)
        noise = latents.to(self.device, torch.float32) if latents is not None else randn(shape, generator, self.device)
        if tuple(noise.shape) != shape:
            raise ValueError(f"latents have shape {tuple(noise.shape)}, expected {shape}")
        model_fn = self.model_fn(context, num_frames, guidance_scale if cfg else None)
        x = self._sample(sampler, model_fn, noise, num_inference_steps, eta, generator, callback, progress)
        if output_type == "latent":
            return VideoPipelineOutput(frames=x)
        decoded = checks.finite_output(self.decode(x, decode_chunk_size), "VAE", self.vae.dtype, self.vae)
        return VideoPipelineOutput(frames=self._postprocess(decoded, output_type))

    def _check(self, height, width, num_frames, output_type, sampler, chunk):
        check_sampler(sampler)
        check_output_type(output_type, OUTPUT_TYPES)
        for name, v in (("num_frames", num_frames), ("decode_chunk_size", chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        height = self.default_size[0] if height is None else height
        width = self.default_size[1] if width is None else width
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % self.vae_scale:
                raise ValueError(f"{name}={v} must be a positive multiple of {self.vae_scale}")
        return height, width

    def _context(self, prompt, negative_prompt, cfg, clip_skip):
        """Text tokens (B or 2B, 77, C): [negative, positive] with guidance, as diffusers' encode_prompt (SD 2.x)."""
        context, _, negative, _ = self.text.encode(prompt, negative_prompt, guidance=cfg, clip_skip=clip_skip)
        if cfg:
            context = torch.cat([negative, context])
        return context.to(self.device, self.unet.dtype)

    def model_fn(self, context, frames, guidance_scale=None):
        """The sampler's model_fn(x_in, t) on frames folded into the batch, (N*F, C, h, w) -> raw UNet output of the
        same shape; the UNet sees (N, C, F, h, w). With guidance_scale, N = 2B: [negative; positive]."""
        def unet_fn(x_in, t):
            out = self.unet(unfold(x_in, frames).to(self.unet.dtype), t, context).float()
            return checks.finite_output(fold(out), "UNet", self.unet.dtype, self.unet)  # every step: NaN is named
        return unet_fn if guidance_scale is None else guided(unet_fn, guidance_scale)

    def _sample(self, sampler, model_fn, noise, num_steps, eta, generator, callback, show):
        """The sampler steps on (B*F, C, h, w), as diffusers' scheduler does (so its random draws are diffusers');
        callback(i, t, latents) sees (B, C, F, h, w), and a tensor it returns replaces them. -> (B, C, F, h, w)."""
        frames = noise.shape[2]

        def unfolded(i, t, x):
            out = None if callback is None else callback(i, t, unfold(x, frames))
            return None if out is None else fold(out)
        total = len(self.schedule.timesteps(num_steps, sampler))
        options = {"eta": eta} if "eta" in SAMPLERS[sampler].options else {}
        start_run(self.unet)  # DeepCache, when on: step 0 of this run is a full step
        with progress(total, show, [unfolded]) as step_callback:
            x = sample(sampler, model_fn, fold(noise), self.schedule, num_steps, generator=generator,
                       callback=step_callback, **options)
        return unfold(x, frames)

    def decode(self, latents, chunk_size=8):
        """(B, 4, F, h, w) latents -> (B, F, 3, H, W) images in [-1, 1] (decode_frames)."""
        return decode_frames(self.vae, latents, chunk_size)

    @staticmethod
    def _postprocess(video, output_type):
        if output_type == "pil":
            return [to_pil(v) for v in video]
        pt = (video / 2 + 0.5).clamp(0, 1)  # as diffusers' VideoProcessor
        if output_type == "pt":
            return pt
        return np.ascontiguousarray(pt.cpu().permute(0, 1, 3, 4, 2).numpy())  # "np": (B, F, H, W, 3)


def fold(x):
    """(B, C, F, h, w) -> (B*F, C, h, w), row b * F + f: frames folded into the batch."""
    return rearrange(x, "b c f h w -> (b f) c h w")


def unfold(x, frames):
    return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


@torch.no_grad()
def decode_frames(vae, latents, chunk_size=8):
    """(B, 4, F, h, w) latents -> (B, F, 3, H, W) float32 images in [-1, 1], `chunk_size` frames per VAE call. Each
    frame is decoded on its own (no op mixes the batch), so the chunking changes the peak memory, not the result
    (up to the float round-off of batch-size-dependent conv kernels)."""
    frames = latents.shape[2]
    z = fold(latents).to(vae.decoder.conv_in.weight.device)
    z = z * (1 / vae.scaling_factor)  # diffusers' order of operations
    images = torch.cat([vae.decode(part).float() for part in z.split(chunk_size)])
    return rearrange(images, "(b f) c h w -> b f c h w", f=frames)
