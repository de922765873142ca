"""From prompt to image with minunet's own UNet, samplers and VAE, and CLIP text encoders from transformers.

    pipe = Pipeline.from_single_file("sd_xl_base_1.0.safetensors", dtype=torch.float16, device="cuda")
    image = pipe("a red fox in the snow", num_inference_steps=30, generator=torch.Generator().manual_seed(0)).images[0]

Argument names and meanings are diffusers' (StableDiffusion[XL][Img2Img]Pipeline). With the same generator the
random draws happen in diffusers' order (initial noise; in img2img the VAE sample, then the noise), so a seed
gives the same image as diffusers. One deliberate difference: `clip_skip` applies to the negative prompt too
(see minunet.loading.text). Inpainting (mask_image=) is StableDiffusion[XL]InpaintPipeline's: see minunet.pipelines.inpaint; the
SDXL negative size / crop ids follow diffusers' rules, ignored arguments included: see minunet.pipelines.micro_conditioning.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..blocks.tome import disable_tome, enable_tome
from ..errors import CheckpointError
from ..loading.io import looks_like_repo_id, read_json
from ..loading.text import TextConditioner
from ..loading.unet import load_unet, load_unet_single_file
from ..loading.vae import load_vae
from ..models.config import family
from ..models.deepcache import start_run
from ..noise import check_generators, randn, repeat_to
from ..schedulers import SAMPLERS, Schedule, guided, sample
from ..weights import CONFIGS
from . import checks, inpaint
from .common import UNetPipeline, check_output_type, check_sampler, fetch_pipeline, progress, unet_module
from .images import from_pil, to_pil
from .micro_conditioning import time_ids

# a single file carries no scheduler config or default size: the official ones for its family
FAMILY_DEFAULTS = {"sd1": ("stable-diffusion-v1-5", 512), "sd2": ("stable-diffusion-2-1", 768),
                   "sdxl": ("stable-diffusion-xl-base-1.0", 1024), "sdxl-refiner": ("stable-diffusion-xl-refiner-1.0", 1024)}


@dataclass
class PipelineOutput:
    images: list  # PIL images, or a (B, 3, H, W) tensor in [0, 1] for "pt", or latents for "latent"


class Pipeline(UNetPipeline):
    def __init__(self, unet, vae, text, schedule, *, default_size=None, default_guidance=None):
        self.unet, self.vae, self.text, self.schedule = unet, vae, text, schedule
        self.family = text.family  # the text encoders tell the refiner (bigG alone, aesthetic score) from the base
        if (family(unet.config) in ("sdxl", "sdxl-refiner")) != (self.family in ("sdxl", "sdxl-refiner")):
            raise CheckpointError(f"a {family(unet.config)} UNet cannot run with {self.family} text encoders")
        self.vae_scale = vae.config.downscale
        self.default_size = default_size or FAMILY_DEFAULTS[self.family][1]
        self.default_guidance = default_guidance  # None: diffusers' (see defaults); a model's own, e.g. the tiny one
        self.offload_device = None  # set by enable_model_cpu_offload
        self.loras = []             # LoRAs on the UNet and text encoders, see load_lora

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source, *, dtype=None, device=None, variant=None, compile=False, unet=None, vae=None,
                        text_encoder=None, text_encoder_2=None):
        """A diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder*/, tokenizer*/, scheduler/)
        or a Hub repo id of one. unet= / vae= / text_encoder= / text_encoder_2=: already loaded modules used
        as they are (shared, not loaded again), e.g. the base's VAE and bigG for the refiner."""
        folder = Path(source)
        if not folder.is_dir():
            if not looks_like_repo_id(source):
                raise CheckpointError(f"{source}: no such folder, and not a Hub repo id ('owner/name')")
            folder = fetch_pipeline(str(source), variant)
        if not (folder / "unet").is_dir():
            raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no unet/)")
        unet = unet if unet is not None else load_unet(folder / "unet", dtype=dtype, device=device, variant=variant)
        vae = vae if vae is not None else load_vae(folder / "vae", dtype=dtype, device=device)
        text = TextConditioner.from_pretrained(folder, dtype=dtype, device=device,
                                               encoders=_shared_encoders(text_encoder, text_encoder_2))
        schedule = schedule_from_file(folder / "scheduler" / "scheduler_config.json")
        size = read_json(folder / "unet" / "config.json", "UNet config").get("sample_size")
        pipe = cls(unet, vae, text, schedule,
                   default_size=size * vae.config.downscale if isinstance(size, int) else None)
        return pipe.compile() if compile else pipe

    @classmethod
    def from_single_file(cls, path, *, dtype=None, device=None, prediction_type=None, compile=False, unet=None,
                         vae=None, text_encoder=None, text_encoder_2=None):
        """An original checkpoint holding UNet, VAE and text encoders. SD 2.x files do not say whether they
        predict epsilon (512 base) or v (768-v): pass prediction_type, else the heuristic below decides.
        unet= / vae= / text_encoder= / text_encoder_2=: already loaded modules used as they are (shared): the
        refiner with the base's VAE and bigG is `from_single_file(refiner_file, **base.components("vae",
        "text_encoder_2"))`; a shared text encoder must have the file's shapes."""
        unet = unet if unet is not None else load_unet_single_file(path, dtype=dtype, device=device)
        vae = vae if vae is not None else load_vae(path, dtype=dtype, device=device)
        text = TextConditioner.from_single_file(path, dtype=dtype, device=device,
                                                encoders=_shared_encoders(text_encoder, text_encoder_2))
        fam = family(unet.config)
        repo, size = FAMILY_DEFAULTS[fam]
        sched = read_json(CONFIGS / repo / "scheduler" / "scheduler_config.json", "scheduler config")
        if fam == "sd2":
            prediction_type = prediction_type or _sd2_prediction_type(unet)
            size = 768 if prediction_type == "v_prediction" else 512
        if prediction_type is not None:
            sched["prediction_type"] = prediction_type
        pipe = cls(unet, vae, text, Schedule.from_config(sched), default_size=size)
        return pipe.compile() if compile else pipe

    @classmethod
    def from_pipe(cls, pipe, **changes):
        """A pipeline on the same loaded modules (nothing is copied or loaded), with any of unet=, vae=, text=,
        schedule=, default_size=, default_guidance= replaced."""
        unknown = sorted(set(changes) - {"unet", "vae", "text", "schedule", "default_size", "default_guidance"})
        if unknown:
            raise TypeError(f"from_pipe: unknown components {unknown}; expected unet, vae, text, schedule, "
                            "default_size, default_guidance")
        parts = {**dict(unet=pipe.unet, vae=pipe.vae, text=pipe.text, schedule=pipe.schedule,
                        default_size=pipe.default_size, default_guidance=pipe.default_guidance), **changes}
        return cls(parts.pop("unet"), parts.pop("vae"), parts.pop("text"), parts.pop("schedule"), **parts)

    def components(self, *names):
        """{name: module} of this pipeline's unet, vae, text_encoder, text_encoder_2 (all, or those named), to
        pass to another pipeline's from_single_file / from_pretrained so that it shares them."""
        found = {"unet": self.unet, "vae": self.vae}
        found.update({s.subfolder: e for s, e in zip(self.text.specs, self.text.encoders)})
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"this {self.family} pipeline has no {missing}; it has {sorted(found)}")
        return {n: found[n] for n in (names or found)}

    @classmethod
    def tiny(cls, *, dtype=None, device=None):
        """The tiny Stable Diffusion trained by `minunet train-tiny` and shipped in the package (16 MB): one plain
        shape of one colour on a plain background, e.g. "a red circle on a blue background", 32 x 32 px. An SD
        1.x-structure single file like any other (from_single_file), at the size it was trained at."""
        from ..weights import TINY_GUIDANCE, TINY_MODEL

        return cls._shipped(TINY_MODEL, dtype, device, TINY_GUIDANCE)

    @classmethod
    def tiny_inpainting(cls, *, dtype=None, device=None):
        """The tiny model's inpainting twin, shipped beside it (`minunet train-tiny --model tiny-inpainting`): the
        9-channel SD 1.x UNet (latents ++ mask ++ masked-image latents) made from its UNet, on its VAE and text
        encoder; give image= and mask_image= (white repaints), e.g. a hole to fill with "a red circle on a blue
        background"."""
        from ..weights import TINY_GUIDANCE, TINY_INPAINTING

        return cls._shipped(TINY_INPAINTING, dtype, device, TINY_GUIDANCE)

    @classmethod
    def _shipped(cls, path, dtype, device, guidance=None):
        from ..weights import TINY_SIZE

        if not path.is_file():
            raise CheckpointError(f"{path}: this shipped tiny model is missing from this installation")
        dtype = torch.float32 if dtype in (None, "auto") else dtype  # "auto": float32, bf16 gains nothing at 8 x 8
        return cls.from_pipe(cls.from_single_file(path, dtype=dtype, device=device), default_size=TINY_SIZE,
                             default_guidance=guidance)

    @classmethod
    def tiny_random(cls, family_name="sd1", seed=0, *, in_channels=4):
        """A small random-initialised pipeline built in memory from a fixed seed: it runs anywhere in seconds and
        makes noise, not pictures. in_channels=9: the inpainting UNet structure."""
        from ..models.config import UNetConfig
        from ..models.vae import VAE, VAEConfig
        from ..models.unet import UNet

        if family_name != "sd1":
            raise ValueError("tiny pipelines exist for the sd1 structure only")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            text = TextConditioner.tiny("sd1", seed=seed)
            unet = UNet(UNetConfig(block_out_channels=(32, 64), attention_levels=(True, False), transformer_depth=(1, 0),
                                   num_heads=(2, 2), context_dim=text.context_dim, in_channels=in_channels)).eval()
            vae = VAE(VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=128)).eval()
        sched = read_json(CONFIGS / "stable-diffusion-v1-5" / "scheduler" / "scheduler_config.json", "scheduler config")
        return cls(unet, vae, text, Schedule.from_config(sched), default_size=128)  # 16 x 16 latents

    def enable_tome(self, ratio=0.5, *, max_downsample=1, sx=2, sy=2):
        """Token merging (blocks/tome.py): self-attention on (1 - ratio) of the tokens at the levels downsampled at
        most `max_downsample` times, as tomesd's apply_patch with use_rand=False. -> the ToMe settings."""
        return enable_tome(unet_module(self.unet), ratio, max_downsample=max_downsample, sx=sx, sy=sy)

    def disable_tome(self):
        disable_tome(unet_module(self.unet))
        return self

    def load_lora(self, source, scale=1.0, *, fuse=False):
        """A LoRA file (kohya / A1111 or diffusers / PEFT, see minunet.loading.lora) on the UNet and the text encoders ->
        the `Lora` (change `.scale`, `.fuse()`, `.unfuse()`, `.remove()`). Several can be on at once; every key
        must map to a module of this pipeline, else nothing is applied. `unload_lora()` takes them all off."""
        from ..loading.lora import load_lora

        targets = {"unet": unet_module(self.unet), **{s.subfolder: e for s, e in zip(self.text.specs, self.text.encoders)}}
        lora = load_lora(targets, source, scale, fuse=fuse)
        self.loras.append(lora)
        return lora

    def unload_lora(self):
        """Take every LoRA off: the weights are the loaded ones again, bit for bit."""
        for lora in reversed(self.loras):
            lora.remove()
        self.loras.clear()

    def enable_model_cpu_offload(self, device="cuda"):
        """Keep every model on the CPU and move each to `device` only while it runs."""
        self.offload_device = torch.device(device)
        for m in (self.unet, self.vae, self.text):
            m.to("cpu")

    @contextmanager
    def _running(self, module):
        if self.offload_device is not None:
            module.to(self.offload_device)
        try:
            yield
        finally:
            if self.offload_device is not None:
                module.to("cpu")

    @property
    def device(self):  # with CPU offload, where each model runs
        return self.offload_device or self.unet.device

    # ---- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, prompt_2=None, negative_prompt_2=None, height=None, width=None,
                 num_inference_steps=30, guidance_scale=None, num_images_per_prompt=1, sampler="euler", eta=0.0,
                 generator=None, latents=None, image=None, strength=None, denoising_start=None, denoising_end=None,
                 original_size=None, crops_coords_top_left=(0, 0), target_size=None, aesthetic_score=6.0,
                 negative_aesthetic_score=2.5, guidance_rescale=0.0, clip_skip=None, output_type="pil", callback=None,
                 progress=True, mask_image=None, masked_image_latents=None, padding_mask_crop=None,
                 negative_original_size=None, negative_crops_coords_top_left=None, negative_target_size=None,
                 negative_ids="diffusers"):
        """Prompt (and, for img2img / the refiner, an image or latents; for inpainting, an image and a mask) ->
        images; see the module docstring, minunet.pipelines.inpaint and minunet.pipelines.micro_conditioning."""
        image = checks.pipeline_arguments(self, locals())  # one named ValueError / TypeError per bad argument
        inpainting = mask_image is not None
        self._check_call(sampler, output_type, image, mask_image, padding_mask_crop)
        guidance_scale, strength = self.defaults(guidance_scale, strength, inpainting)
        height, width = self._size(height, width, image, inpainting)
        cfg = guidance_scale > 1.0
        # 1. text -> context (and SDXL's pooled text + size ids)
        mode = "inpainting" if inpainting else "img2img" if image is not None else "text-to-image"
        ids = time_ids(self.family == "sdxl-refiner", mode, height, width, original_size=original_size,
                       crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                       aesthetic_score=aesthetic_score, negative_aesthetic_score=negative_aesthetic_score,
                       negative_original_size=negative_original_size, negative_target_size=negative_target_size,
                       negative_crops_coords_top_left=negative_crops_coords_top_left, negative_ids=negative_ids)
        context, added = self._conditioning(prompt, negative_prompt, prompt_2, negative_prompt_2, num_images_per_prompt,
                                            clip_skip, cfg, ids)
        checks.finite_output(context, "text encoder", self.text.encoders[-1].dtype, self.text)
        # 2. where the run starts: noise, or an image's latents (img2img, refiner, inpainting)
        batch = context.shape[0] // (2 if cfg else 1)
        shape = (batch, self.unet.config.out_channels, height // self.vae_scale, width // self.vae_scale)
        run = None
        if inpainting:
            start, run = self._inpaint_start(shape, image, mask_image, masked_image_latents, padding_mask_crop,
                                             latents, strength, denoising_start, denoising_end, generator)
        else:
            start = self._start(shape, image, latents, strength, denoising_start, denoising_end, generator)
        # 3. the denoising loop: the UNet (with classifier-free guidance) inside the sampler
        cause = _overflow_cause(guidance_scale if cfg else None, sampler)
        model_fn = self.model_fn(context, added, guidance_scale if cfg else None, guidance_rescale,
                                 None if run is None else run.unet_input, cause)
        x = self._sample(sampler, model_fn, num_inference_steps, start, eta, generator, callback, progress, run)
        checks.finite_output(x, "sampler", None, cause=cause)
        # 4. latents -> images (inpainting with padding_mask_crop: pasted into the original)
        if output_type == "latent":
            return PipelineOutput(images=x)
        images = self._decode(x, output_type, cause)
        return PipelineOutput(images=images if run is None else run.finish(images))

    def model_fn(self, context, added, guidance_scale=None, guidance_rescale=0.0, extra_input=None, cause=None):
        """The sampler's model_fn(x_in, t) -> raw UNet output, with classifier-free guidance when guidance_scale is
        given (context and the added conditioning then hold [negative; positive]). `self.unet` is read at each call,
        so `pipe.unet = torch.compile(pipe.unet, ...)` takes effect. extra_input(x_in) -> the UNet's input (a
        9-channel inpainting UNet's mask and masked-image latents). Every output is checked for NaN / Inf (the
        UNet's, naming a damaged weight; the guided one, naming `cause`)."""
        def unet_fn(x_in, t):
            if extra_input is not None:
                x_in = extra_input(x_in)
            return self.unet(x_in.to(self.unet.dtype), t, context, **added).float()
        unet_fn = checks.finite_calls(unet_fn, "UNet", self.unet.dtype, self.unet, cause)
        if guidance_scale is None:
            return unet_fn
        return checks.finite_calls(guided(unet_fn, guidance_scale, guidance_rescale), "guidance", None, cause=cause)

    def _check_call(self, sampler, output_type, image, mask_image, padding_mask_crop):
        check_sampler(sampler)
        check_output_type(output_type, ("pil", "pt", "latent"))
        if mask_image is not None:
            inpaint.check_inputs(image, mask_image, padding_mask_crop, output_type, self.unet.config.in_channels)
        elif self.unet.config.in_channels != 4:
            raise ValueError(f"this UNet has {self.unet.config.in_channels} input channels (an inpainting model): "
                             "give image= and mask_image=")

    def defaults(self, guidance_scale=None, strength=None, inpainting=False):
        """diffusers' defaults: guidance 7.5 (SDXL text-to-image / img2img 5.0; SDXL inpainting 7.5 again) unless
        the pipeline has its model's own (default_guidance); strength 0.8 / 0.3 (SDXL) for img2img, 1.0 / 0.9999
        (SDXL) for inpainting."""
        xl = self.family in ("sdxl", "sdxl-refiner")
        if guidance_scale is None and self.default_guidance is not None:
            guidance_scale = self.default_guidance
        elif guidance_scale is None:
            guidance_scale = 5.0 if xl and not inpainting else 7.5
        if strength is None:
            strength = (0.9999 if xl else 1.0) if inpainting else (0.3 if xl else 0.8)
        return guidance_scale, strength

    def _conditioning(self, prompt, negative_prompt, prompt_2, negative_prompt_2, num_images_per_prompt, clip_skip,
                      cfg, ids):
        """Text encoders -> (context, UNet keyword arguments); with CFG both are [negative; positive]."""
        with self._running(self.text):
            context, pooled, neg_context, neg_pooled = self.text.encode(
                prompt, negative_prompt, prompt_2, negative_prompt_2, guidance=cfg,
                num_images_per_prompt=num_images_per_prompt, clip_skip=clip_skip)
        added = self._added_conditioning(pooled, neg_pooled, ids, cfg)
        if cfg:
            context = torch.cat([neg_context, context])
        return context.to(self.device, self.unet.dtype), added

    def _start(self, shape, image, latents, strength, denoising_start, denoising_end, generator):
        """What the sampler starts from: dict(noise=, init_latents=, and the window arguments of Schedule.steps)."""
        window = {"denoising_end": denoising_end}
        init = None
        if image is not None:
            init = self._image_latents(image, generator, shape[0])
            if denoising_start is not None:  # the refiner: continue where the base stopped
                window["denoising_start"] = denoising_start
            else:  # img2img: noise the image to the strength's step
                window["strength"] = strength
        elif denoising_start is not None:
            raise ValueError("denoising_start needs image= (the latents from the base model)")
        if latents is not None:
            noise = latents.to(self.device, torch.float32)
        elif denoising_start is not None:
            noise = None  # the refiner continues the base's latents and draws no starting noise
        else:
            noise = randn(shape, generator, self.device)
        return dict(noise=noise, init_latents=init, **{k: v for k, v in window.items() if v is not None})

    def _sample(self, sampler, model_fn, num_steps, start, eta, generator, callback, show, run=None):
        window = {k: v for k, v in start.items() if k not in ("noise", "init_latents")}
        steps = self.schedule.steps(num_steps, sampler, **window)
        blend = None if run is None else run.blend_step(steps)  # 4-channel inpainting: before the user's callback
        options = {"eta": eta} if "eta" in SAMPLERS[sampler].options else {}
        start_run(self.unet)  # DeepCache, when on: step 0 of this run is a full step
        with self._running(self.unet), progress(len(steps.timesteps), show, [blend, callback]) as step_callback:
            return sample(sampler, model_fn, start["noise"], self.schedule, num_steps, init_latents=start["init_latents"],
                          generator=generator, callback=step_callback, **window, **options)

    def _decode(self, latents, output_type, cause=None):
        with self._running(self.vae):
            decoded = self.vae.decode(latents.to(self.device) / self.vae.scaling_factor)
        # a NaN image would be saved black; finite weights: the latents were out of range (`cause`)
        checks.finite_output(decoded, "VAE", self.vae.dtype, self.vae,
                             None if cause is None else f"Its input latents reach |x| = {float(latents.abs().max()):.3g}. {cause}")
        if output_type == "pt":
            return (decoded.float() * 0.5 + 0.5).clamp(0, 1)
        return to_pil(decoded)

    # ---- pieces ----------------------------------------------------------------------------------------------
    def _size(self, height, width, image, inpainting=False):
        if image is not None and isinstance(image, torch.Tensor) and image.shape[1] == 4:  # latents (refiner)
            height, width = image.shape[2] * self.vae_scale, image.shape[3] * self.vae_scale
        elif image is not None and not inpainting:  # img2img keeps the image's size; inpainting resizes to the output
            pixels = from_pil(image) if not isinstance(image, torch.Tensor) else image
            height, width = pixels.shape[2], pixels.shape[3]
        height = height or self.default_size
        width = width or self.default_size
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % self.vae_scale:
                raise ValueError(f"{name}={v} must be a positive multiple of {self.vae_scale}")
        return height, width

    def _added_conditioning(self, pooled, neg_pooled, ids, cfg):
        """SDXL micro-conditioning: pooled text + the (positive, negative) ids of minunet.pipelines.micro_conditioning."""
        if self.unet.config.adm_in_channels is None:
            return {}
        b = pooled.shape[0]
        dev, dtype = self.device, self.unet.dtype
        time_ids = torch.tensor([ids[0]], dtype=dtype, device=dev).repeat(b, 1)
        if cfg:
            neg = torch.tensor([ids[1]], dtype=dtype, device=dev).repeat(b, 1)
            return {"text_embeds": torch.cat([neg_pooled, pooled]).to(dev, dtype), "time_ids": torch.cat([neg, time_ids])}
        return {"text_embeds": pooled.to(dev, dtype), "time_ids": time_ids}

    def _inpaint_start(self, shape, image, mask_image, masked_image_latents, padding_mask_crop, latents, strength,
                       denoising_start, denoising_end, generator):
        """(sampler start as _start gives it, InpaintRun) for an inpainting run (see minunet.pipelines.inpaint)."""
        if denoising_start is not None:  # the refiner: start from the given latents, no noise added
            window = {"denoising_start": denoising_start}
        else:  # strength 1: pure noise, as text-to-image; else the image latents noised to the first step
            window = {} if strength == 1.0 else {"strength": strength}
        check_generators(generator, shape[0])
        height, width = shape[2] * self.vae_scale, shape[3] * self.vae_scale
        pixels, mask, box = inpaint.prepare_inputs(image, mask_image, height, width, padding_mask_crop)
        dev = self.device
        def noise_fn():  # drawn between the image encode and the masked-image encode, as diffusers
            return latents.to(dev, torch.float32) if latents is not None else randn(shape, generator, dev)
        image_latents, noise, masked = self._inpaint_latents(
            pixels.to(dev), mask.to(dev), shape[0], generator, noise_fn, masked_image_latents,
            need_image_latents=self.unet.config.in_channels == 4 or bool(window))
        small = repeat_to(inpaint.latent_mask(mask.to(dev), self.vae_scale), shape[0], "mask_image").to(dev)
        run = inpaint.InpaintRun(small, masked, image_latents, noise, box, image, mask_image)
        window["denoising_end"] = denoising_end
        start = dict(noise=None if denoising_start is not None else run.noise,
                     init_latents=run.image_latents if "strength" in window or denoising_start is not None else None)
        return {**start, **{k: v for k, v in window.items() if v is not None}}, run

    def _inpaint_latents(self, pixels, mask, batch, generator, noise_fn, masked_image_latents, need_image_latents):
        """(image latents, starting noise, masked-image latents), drawn in diffusers' order: [image encode] ->
        noise -> [masked-image encode]. A 4-channel UNet never reads the masked-image latents: diffusers encodes
        them anyway; here only their random draws are made (skip_encode), so a seed gives the same stream
        (Euler a, DDIM with eta) without the wasted VAE pass."""
        nine = self.unet.config.in_channels == 9
        given = pixels.shape[1] == 4  # latents (the SDXL refiner continuing the base): no encode
        image_latents = None
        if given or need_image_latents:
            image_latents = repeat_to(pixels if given else self.encode_latents(pixels, generator), batch, "image")
        noise = noise_fn()
        masked = masked_image_latents
        if masked is None and nine and given:
            raise ValueError("a 9-channel (inpainting) UNet given latents as image= needs masked_image_latents= too")
        if masked is None and nine:
            masked = self.encode_latents(inpaint.masked_image(pixels, mask), generator)
        elif masked is None and not given:
            self.skip_encode(pixels, generator)
        if masked is not None:
            masked = repeat_to(masked.to(self.device, torch.float32), batch, "masked_image_latents")
        return image_latents, noise, masked

    def encode_latents(self, pixels, generator):
        """Scaled VAE posterior samples of (n, 3, H, W) pixels in [-1, 1], as diffusers' inpainting pipelines draw
        them: one draw for the batch, or with a list of generators image i from generator i."""
        with self._running(self.vae):
            pixels = pixels.to(self.device, self.vae.dtype)
            if isinstance(generator, (list, tuple)):
                out = torch.cat([self.vae.encode(pixels[i:i + 1]).sample(generator[i]) for i in range(len(pixels))])
            else:
                out = self.vae.encode(pixels).sample(generator)
        return (out * self.vae.scaling_factor).float()

    def skip_encode(self, pixels, generator):
        """The random draws encode_latents would make for these pixels, without the VAE."""
        h, w = pixels.shape[2] // self.vae_scale, pixels.shape[3] // self.vae_scale
        c = self.vae.config.latent_channels
        fp16_upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        dtype = torch.float32 if fp16_upcast else self.vae.dtype  # the dtype the posterior samples in
        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        n = 1 if isinstance(generator, (list, tuple)) else len(pixels)
        for g in gens[:len(pixels)]:
            randn((n, c, h, w), g, self.device, dtype)

    def _image_latents(self, image, generator, batch):
        """img2img start: VAE posterior sample * scaling factor (drawn before the noise, as diffusers).

        As diffusers: with one generator the given images are encoded and sampled once, then repeated up to the
        batch (one image for two prompts: both start from the same latents); with a list, one per sample, the
        images are repeated first and sample i is drawn from generator i."""
        dev = self.device
        latents = isinstance(image, torch.Tensor) and image.shape[1] == 4  # SDXL base -> refiner hand-over
        if latents:
            out = image.to(dev, torch.float32)
        else:
            pixels = image * 2 - 1 if isinstance(image, torch.Tensor) else from_pil(image)  # tensors are in [0, 1]
            if isinstance(generator, (list, tuple)):
                check_generators(generator, batch)
                pixels = repeat_to(pixels, batch, "image")
            with self._running(self.vae):
                posterior = self.vae.encode(pixels.to(dev, self.vae.dtype))
                out = (posterior.sample(generator) * self.vae.scaling_factor).float()
        return repeat_to(out, batch, "image latents" if latents else "image")


def _overflow_cause(guidance_scale, sampler):
    """What to blame for NaN / Inf when the weights are finite: the guidance scale when there is guidance."""
    if guidance_scale is not None:
        return (f"The weights are finite: guidance_scale={guidance_scale:g} multiplies the difference of the two "
                "predictions and the latents overflowed; usual values are 1-20.")
    return f"The weights are finite: the latents overflowed while sampling with sampler '{sampler}'."


def _shared_encoders(text_encoder, text_encoder_2):
    return {k: v for k, v in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)) if v is not None}


def schedule_from_file(path):
    """A Schedule from a scheduler_config.json; a bad field is a CheckpointError naming the file and the field."""
    try:
        return Schedule.from_config(read_json(path, "scheduler config"))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def _sd2_prediction_type(unet):
    """SD 2.x 512-base (epsilon) and 768-v (v) files have the same keys: ComfyUI's heuristic, the std of one norm
    bias of the last decoder transformer, is above 0.09 only in the v model."""
    blocks = unet.up_blocks[-1].attentions
    std = float(blocks[-1].transformer_blocks[0].norm1.bias.float().std()) if blocks is not None else 0.0
    return "v_prediction" if std > 0.09 else "epsilon"
