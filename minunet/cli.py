"""The `minunet` command: generate, video, inspect, parity, download.

    minunet generate "a red fox" --model tiny --out fox.png
    minunet generate "a red fox" --model sd15 --upscale x2 --out fox-1024.png
    minunet video "a panda surfing" --model tiny-video --frames 16 --out panda.mp4
    minunet inspect sd_xl_base_1.0.safetensors
    minunet parity v1-5-pruned-emaonly.safetensors
    minunet download sd15
"""
import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from .schedulers.samplers import SAMPLERS  # the one sampler table (light: no torch model code)

# official single files: name -> (Hub repo, file, path in LFS_POINTERS.tsv or None when no pointer is known)
OFFICIAL = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors",
             "stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"),
    "sd21": ("stabilityai/stable-diffusion-2-1", "v2-1_768-ema-pruned.safetensors", None),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors",
             "stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"),
    "sdxl-refiner": ("stabilityai/stable-diffusion-xl-refiner-1.0", "sd_xl_refiner_1.0.safetensors",
                     "stable-diffusion-xl-refiner-1.0/sd_xl_refiner_1.0.safetensors"),
    "sdxl-turbo": ("stabilityai/sdxl-turbo", "sd_xl_turbo_1.0_fp16.safetensors",
                   "sdxl-turbo/sd_xl_turbo_1.0_fp16.safetensors"),
}


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


def cmd_inspect(args):
    from .inspect import format_report, inspect_file

    path = Path(args.file) if args.file else None
    tmp = None
    if args.demo:  # a tiny random SD 1.5-structured single file, so the command runs anywhere
        import safetensors.torch as st

        from .config import UNetConfig
        from .loading import original_state_dict
        from .unet import UNet
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "tiny-sd15-random.safetensors"
        cfg = UNetConfig(block_out_channels=(32, 64, 64, 64))
        st.save_file({k: v.contiguous() for k, v in original_state_dict(UNet(cfg)).items()}, path)
        print("(demo: a tiny random-weight UNet in the SD 1.5 layout, written to a temporary file)")
    if path is None:
        raise UsageError("inspect: give a FILE (or --demo)")
    if not path.exists():
        raise UsageError(f"inspect: {path}: no such file")
    report = inspect_file(path, check_hash=not args.no_hash)
    if args.check_values:
        from .inspect import nonfinite_tensors
        report["nonfinite"] = nonfinite_tensors(path)
    print(json.dumps(report, indent=1) if args.json else format_report(report))


def cmd_convert(args):
    import torch

    from .convert import convert
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise UsageError(f"convert: the output {out} must end in .safetensors")
    if not Path(args.input).is_file():
        raise UsageError(f"convert: {args.input}: no such file")
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    info = convert(args.input, out, dtype=dtype)
    print(f"wrote {out}: {info['tensors']} tensors, {info['bytes']:,} bytes, verified by reading it back"
          + (f"; {info['shared_copied']} tensors that shared memory written as copies" if info["shared_copied"] else "")
          + (f"; dropped non-tensor entries {info['dropped'][:10]}" if info["dropped"] else ""))


def cmd_download(args):
    from .inspect import official_files, sha256
    from .io import hub_download

    if args.name not in OFFICIAL:
        raise UsageError(f"download: unknown name '{args.name}' (known: {', '.join(OFFICIAL)})")
    repo, filename, pointer = OFFICIAL[args.name]
    path = hub_download(repo, [filename])
    if pointer is None:
        print(f"{path}\n(no published SHA-256 on record for {filename}: not verified)")
        return
    expected = {p: s for entries in official_files().values() for p, s in entries}[pointer]
    digest = sha256(path)
    if digest != expected:
        raise UsageError(f"download: {path}: SHA-256 {digest} does not match the official {expected}: "
                         "delete the file and download it again")
    print(f"{path}\nSHA-256 verified: {digest}")


MODEL_NAMES = ("tiny", "tiny-inpainting", *OFFICIAL)


def load_pipeline(model, dtype=None, device=None, flag="--model", **shared):
    """--model: 'tiny' ('tiny-inpainting': its 9-channel twin), an official name (downloaded once into the Hub
    cache), a folder, a file or a repo id. `shared`: loaded modules to use instead of loading them (--refiner)."""
    from .pipeline import Pipeline

    if model in ("tiny", "tiny-inpainting"):
        print(f"minunet: {flag} {model} is a small RANDOM-weight model: it makes noise, not pictures.")
        pipe = Pipeline.tiny(in_channels=9 if model == "tiny-inpainting" else 4)
        for module in (pipe.unet, pipe.vae, pipe.text):  # --dtype / --device as for any other model
            module.to(device=device, dtype=dtype)
        return pipe
    if model in OFFICIAL:
        from .io import hub_download
        repo, filename, _ = OFFICIAL[model]
        return Pipeline.from_single_file(hub_download(repo, [filename]), dtype=dtype, device=device, **shared)
    path = Path(model)
    if path.is_dir():
        return Pipeline.from_pretrained(path, dtype=dtype, device=device, **shared)
    if path.suffix == ".safetensors" or path.suffix in (".ckpt", ".bin", ".pt"):
        if not path.exists():
            raise UsageError(f"{flag} {model}: no such file")
        return Pipeline.from_single_file(path, dtype=dtype, device=device, **shared)
    if model.count("/") == 1 and not path.exists():
        return Pipeline.from_pretrained(model, dtype=dtype, device=device, **shared)
    raise UsageError(f"{flag} {model}: not a file, folder, Hub repo id or known name ({', '.join(MODEL_NAMES)})")


def parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text}: expected WIDTHxHEIGHT, e.g. 512x768") from None
    if w <= 0 or h <= 0 or w % 8 or h % 8:
        raise UsageError(f"--size {text}: width and height must be positive multiples of 8")
    return w, h


def parse_freeu(text, mapping, version):
    if text is None:
        return None
    from .freeu import FreeU

    if "," in text:
        try:
            b1, b2, s1, s2 = (float(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"--freeu {text}: expected a preset name or four numbers b1,b2,s1,s2") from None
        return FreeU(b1=b1, b2=b2, s1=s1, s2=s2, mapping=mapping or "official", version=version or 1)
    try:
        preset = FreeU.preset(text)
    except (KeyError, ValueError) as e:
        raise UsageError(f"--freeu {text}: {e}") from None
    changes = {k: v for k, v in (("mapping", mapping), ("version", version)) if v is not None}
    return dataclasses.replace(preset, **changes) if changes else preset


def check_generate_args(args):
    """Command-line values the pipeline would take but cannot use: caught before any model loads."""
    import math

    from PIL import Image

    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed {args.seed}: must be an integer from 0 to 2**64 - 1")
    if args.cfg is not None and not math.isfinite(args.cfg):
        raise UsageError(f"--cfg {args.cfg}: the guidance scale must be a finite number")
    if args.upscale is not None and args.refiner is not None:
        raise UsageError("--upscale and --refiner: give one (the upscaler takes the base's latents)")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; give a file name, e.g. {out / 'minunet.png'}")
    Image.init()
    if out.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"--out {out}: unknown image extension '{out.suffix}' (use .png, .jpg, .webp, ...)")
    args.device = parse_device(args.device)


def parse_device(text):
    """None, or a torch device that exists on this machine (a bad name is a usage error, a missing one a runtime
    error: exit 1)."""
    import torch

    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text}: not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"--device {text}: MPS is not available on this machine (use --device cpu)")
    return device


def cmd_generate(args):
    import torch

    size = parse_size(args.size) if args.size else None
    check_generate_args(args)
    freeu = parse_freeu(args.freeu, args.freeu_mapping, args.freeu_version)
    if args.compare_freeu and freeu is None:
        raise UsageError("--compare-freeu needs --freeu PRESET or b1,b2,s1,s2")
    inputs = image_inputs(args)  # --image / --mask, checked before any model loads
    pipe = load_pipeline(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    apply_loras(pipe, args)
    check_image_inputs(pipe, args)
    if args.karras:
        pipe.schedule = dataclasses.replace(pipe.schedule, use_karras_sigmas=True)
    refiner = load_refiner(pipe, args)
    if args.upscale is not None:  # SD latents -> the x2 latent upscaler, no VAE round trip
        pipe = UpscaledPipeline(pipe, load_upscaler(args.upscale, args, getattr(torch, args.dtype)), args)
    width, height = size or default_size(args, inputs) or (None, None)
    if args.compare_freeu:
        images = [side_by_side(a, b) for a, b in zip(run_pipeline(pipe, args, height, width, None, inputs, refiner),
                                                      run_pipeline(pipe, args, height, width, freeu, inputs, refiner))]
    else:
        images = run_pipeline(pipe, args, height, width, freeu, inputs, refiner)
    for out, image in zip(output_paths(args.out, len(images)), images):
        save_png(image, args, freeu, out)
        print(f"wrote {out} ({image.width}x{image.height})" +
              (" -- left without FreeU, right with" if args.compare_freeu else ""))


def run_pipeline(pipe, args, height, width, freeu, inputs=None, refiner=None):
    """One generation with the command line's settings (same seed each call), FreeU on or off: --num-images PIL
    images; with --refiner the base stops at --high-noise-frac and the refiner finishes."""
    import torch

    from .io import CheckpointError

    if freeu is not None:
        pipe.enable_freeu(freeu)
    else:
        pipe.disable_freeu()
    kw = dict(negative_prompt=args.negative, height=height, width=width, sampler=args.sampler,
              num_inference_steps=args.steps, guidance_scale=args.cfg, clip_skip=args.clip_skip,
              num_images_per_prompt=args.num_images, **(inputs or {}), **micro_conditioning_args(args))
    try:
        if refiner is None:
            return pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed), **kw).images
        latents = pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed),
                       denoising_end=args.high_noise_frac, output_type="latent", **kw).images
        kw.update(image=latents, denoising_start=args.high_noise_frac)
        return refiner(args.prompt, generator=torch.Generator().manual_seed(args.seed), **kw).images
    except CheckpointError:  # the model, not the command line
        raise
    except (ValueError, TypeError) as e:  # bad --steps, --clip-skip, ...: the pipeline's argument checks
        raise UsageError(str(e)) from None


def image_inputs(args):
    """--image / --mask / --strength / --padding-mask-crop -> the pipeline's image=, mask_image=, ... ."""
    if args.mask is not None and args.image is None:
        raise UsageError("--mask needs --image (the picture to repaint)")
    if args.padding_mask_crop is not None and args.mask is None:
        raise UsageError("--padding-mask-crop needs --mask")
    if args.refiner is not None and not 0 < args.high_noise_frac < 1:
        raise UsageError(f"--high-noise-frac {args.high_noise_frac}: must be a fraction in (0, 1)")
    if args.image is None:
        if args.strength is not None:
            raise UsageError("--strength needs --image")
        return {}
    out = {"image": open_image(args.image, "--image", "RGB"), "strength": args.strength}
    if args.mask is not None:
        out.update(mask_image=open_image(args.mask, "--mask", "L"), padding_mask_crop=args.padding_mask_crop)
        if out["mask_image"].size != out["image"].size:
            raise UsageError(f"--mask {args.mask} is {'x'.join(map(str, out['mask_image'].size))}, --image "
                             f"{args.image} is {'x'.join(map(str, out['image'].size))}: they must be the same size")
    return {k: v for k, v in out.items() if v is not None}


def open_image(path, flag, mode):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{flag} {path}: not an image PIL can read ({e})") from None


def check_image_inputs(pipe, args):
    if pipe.unet.config.in_channels == 9 and args.mask is None:
        raise UsageError(f"--model {args.model} is an inpainting model (9-channel UNet): give --image and --mask")
    negatives = [f for f in ("negative_original_size", "negative_target_size", "negative_crops")
                 if getattr(args, f) is not None]
    if negatives and pipe.unet.config.adm_in_channels is None:
        raise UsageError(f"--{negatives[0].replace('_', '-')} is SDXL micro-conditioning; --model {args.model} is "
                         f"a {pipe.family} model")


def default_size(args, inputs):
    """Inpainting from the command line keeps the --image's size (rounded down to multiples of 8) unless --size
    says otherwise; the Pipeline itself, as diffusers, defaults to the model's size."""
    if args.size is not None or "mask_image" not in inputs:
        return None
    w, h = inputs["image"].size
    if w < 8 or h < 8:
        raise UsageError(f"--image {args.image} is {w}x{h}: too small (at least 8x8)")
    return w - w % 8, h - h % 8


def load_refiner(pipe, args):
    """--refiner MODEL, sharing the base's VAE and bigG text encoder where the refiner has them."""
    import torch

    if args.refiner is None:
        return None
    shared = {} if args.refiner.startswith("tiny") else pipe.components(
        *[n for n in ("vae", "text_encoder_2") if n in pipe.components()])
    refiner = load_pipeline(args.refiner, dtype=getattr(torch, args.dtype), device=args.device, flag="--refiner",
                            **shared)
    if args.karras:
        refiner.schedule = dataclasses.replace(refiner.schedule, use_karras_sigmas=True)
    return refiner


def micro_conditioning_args(args):
    """--negative-original-size / --negative-target-size (WIDTHxHEIGHT) and --negative-crops TOP,LEFT."""
    out = {}
    for key in ("negative_original_size", "negative_target_size"):
        text = getattr(args, key)
        if text is not None:
            try:
                w, h = (int(v) for v in text.lower().split("x"))
            except ValueError:
                raise UsageError(f"--{key.replace('_', '-')} {text}: expected WIDTHxHEIGHT, e.g. 512x512") from None
            out[key] = (h, w)  # diffusers' (height, width)
    if args.negative_crops is not None:
        try:
            top, left = (int(v) for v in args.negative_crops.split(","))
        except ValueError:
            raise UsageError(f"--negative-crops {args.negative_crops}: expected TOP,LEFT, e.g. 0,0") from None
        out["negative_crops_coords_top_left"] = (top, left)
    return out


def output_paths(out, n):
    """--out for one image; OUT-0.png, OUT-1.png, ... for --num-images N > 1."""
    out = Path(out)
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def side_by_side(left, right):
    from PIL import Image

    image = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    image.paste(left, (0, 0))
    image.paste(right, (left.width, 0))
    return image


# --upscale names: (Hub repo, revision); the official repo's main branch holds pickles, its safetensors are on refs/pr/5
UPSCALERS = {"x2": ("stabilityai/sd-x2-latent-upscaler", "refs/pr/5")}


def add_upscale_arguments(p):
    g = p.add_argument_group("x2 latent upscaler (SD latents -> an image twice the size, one command)")
    g.add_argument("--upscale", default=None, metavar="MODEL",
                   help="tiny | x2 (stabilityai/sd-x2-latent-upscaler) | a diffusers folder | a Hub repo id")
    g.add_argument("--upscale-steps", type=int, default=75, help="upscaler steps (diffusers' default 75)")
    g.add_argument("--upscale-cfg", type=float, default=9.0,
                   help="upscaler guidance (diffusers' default 9.0; 0 = empty prompt, as the documented examples)")
    g.add_argument("--upscale-revision", default=None, help="Hub ref of a repo id given to --upscale")


def load_upscaler(model, args, dtype):
    from .upscale_pipeline import UpscalePipeline

    if model == "tiny":
        print("minunet: --upscale tiny is a small RANDOM-weight upscaler: it makes noise, not pictures.")
        return UpscalePipeline.tiny()
    repo, revision = UPSCALERS.get(model, (model, args.upscale_revision))
    if Path(repo).is_dir() or (repo.count("/") == 1 and not Path(repo).exists()):
        return UpscalePipeline.from_pretrained(repo, dtype=dtype, device=args.device, revision=revision)
    raise UsageError(f"--upscale {model}: not a folder, Hub repo id or known name (tiny, {', '.join(UPSCALERS)})")


class UpscaledPipeline:
    """A Pipeline whose latents go on to the upscaler, with the same prompt and generator (the API page's chain);
    FreeU settings go to the first pipeline."""

    def __init__(self, pipe, upscaler, args):
        self.pipe, self.upscaler, self.args = pipe, upscaler, args
        self.enable_freeu, self.disable_freeu = pipe.enable_freeu, pipe.disable_freeu

    def __call__(self, prompt, *, negative_prompt=None, generator=None, **kwargs):
        latents = self.pipe(prompt, negative_prompt=negative_prompt, generator=generator, output_type="latent",
                            **kwargs).images
        return self.upscaler(prompt, image=latents, negative_prompt=negative_prompt, generator=generator,
                             num_inference_steps=self.args.upscale_steps, guidance_scale=self.args.upscale_cfg)


def save_png(image, args, freeu, out=None):
    """The PNG with the generation parameters in its `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    params = {"prompt": args.prompt, "negative_prompt": args.negative, "model": args.model, "sampler": args.sampler,
              "karras": args.karras, "steps": args.steps, "cfg": args.cfg, "clip_skip": args.clip_skip,
              "seed": args.seed, "size": f"{image.width}x{image.height}",
              "freeu": None if freeu is None else dataclasses.asdict(freeu), "compare_freeu": args.compare_freeu,
              "lora": [[str(path), scale] for path, scale in getattr(args, "lora", [])],
              "upscale": None if args.upscale is None else {"model": args.upscale, "steps": args.upscale_steps,
                                                            "cfg": args.upscale_cfg},
              "image": args.image, "mask": args.mask, "strength": args.strength, "refiner": args.refiner,
              "high_noise_frac": args.high_noise_frac if args.refiner is not None else None,
              "num_images": args.num_images, "generator": "minunet"}
    meta = PngInfo()
    meta.add_text("parameters", json.dumps(params))
    out = Path(args.out if out is None else out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, pnginfo=meta)


# video models by name: name -> Hub repo of a diffusers TextToVideoSDPipeline with safetensors files
VIDEO_MODELS = {"ms-1.7b": "ali-vilab/text-to-video-ms-1.7b"}
VIDEO_MODEL_NAMES = ("tiny-video", *VIDEO_MODELS)


def load_video_pipeline(model, dtype=None, device=None):
    """--model for `video`: 'tiny-video', a known name, a diffusers text-to-video folder or a Hub repo id."""
    from .video_pipeline import VideoPipeline

    if model == "tiny-video":
        print("minunet: --model tiny-video is a small RANDOM-weight model: it makes noise, not videos.")
        return VideoPipeline.tiny()
    if model in VIDEO_MODELS:
        return VideoPipeline.from_pretrained(VIDEO_MODELS[model], dtype=dtype, device=device, variant="fp16")
    path = Path(model)
    if path.is_dir():
        return VideoPipeline.from_pretrained(path, dtype=dtype, device=device)
    if model.count("/") == 1 and not path.exists():
        return VideoPipeline.from_pretrained(model, dtype=dtype, device=device)
    raise UsageError(f"--model {model}: not a diffusers text-to-video folder, Hub repo id or known name "
                     f"({', '.join(VIDEO_MODEL_NAMES)})")


def cmd_video(args):
    import numpy as np
    import torch

    from .video_io import export_video

    if args.frames < 1:
        raise UsageError(f"--frames {args.frames}: must be at least 1")
    if args.fps <= 0:
        raise UsageError(f"--fps {args.fps}: must be positive")
    size = parse_size(args.size) if args.size else None
    freeu = parse_freeu(args.freeu, args.freeu_mapping, args.freeu_version)
    if args.compare_freeu and freeu is None:
        raise UsageError("--compare-freeu needs --freeu PRESET or b1,b2,s1,s2")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    pipe = load_video_pipeline(args.model, dtype=dtype, device=args.device)
    width, height = size or (None, None)

    def run(with_freeu):
        if with_freeu is not None:
            pipe.enable_freeu(with_freeu)
        else:
            pipe.disable_freeu()
        try:
            return pipe(args.prompt, negative_prompt=args.negative, height=height, width=width,
                        num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.cfg,
                        sampler=args.sampler, generator=torch.Generator().manual_seed(args.seed)).frames[0]
        except ValueError as e:  # bad --steps and the like: the pipeline's message, without a traceback
            raise UsageError(str(e)) from None

    # (F, H, W, 3) in [0, 1]; side by side: without FreeU on the left, with it on the right
    frames = np.concatenate([run(None), run(freeu)], axis=2) if args.compare_freeu else run(freeu)
    try:
        out = export_video(frames, args.out, fps=args.fps)
    except (ImportError, ValueError) as e:
        raise UsageError(str(e)) from None
    f, h, w = frames.shape[:3]
    print(f"wrote {out} ({f} frames, {w}x{h}, {args.fps:g} fps)"
          + (" -- left without FreeU, right with" if args.compare_freeu else ""))


def cmd_parity(args):
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        raise UsageError("parity needs diffusers: pip install 'minunet[test]'")
    from .parity import compare_blocks, diffusers_twin, format_rows, random_inputs
    if args.model == "tiny":
        from .pipeline import Pipeline
        unet, source = Pipeline.tiny().unet, None
    else:
        from .loading import load_unet
        path = Path(args.model)
        if not path.exists() and args.model.count("/") != 1:
            raise UsageError(f"parity: {args.model}: no such file or folder")
        unet, source = load_unet(args.model), args.model
    theirs = diffusers_twin(source, unet)
    h, w = (int(v) // 8 for v in parse_size(args.size)) if args.size else (32, 32)
    x, t, ctx, added = random_inputs(unet.config, (h, w), dtype=unet.dtype)
    print(format_rows(compare_blocks(unet, theirs, x, t, ctx, added)))


def add_lora_arguments(p):
    from .lora import parse_lora_arg

    p.add_argument("--lora", action="append", default=[], type=parse_lora_arg, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors (kohya / A1111 or diffusers / PEFT) on the UNet and text encoders, "
                        "at SCALE (default 1.0); repeatable")


def apply_loras(pipe, args):
    for path, scale in args.lora:
        pipe.load_lora(path, scale)


def add_video_parser(sub):
    p = sub.add_parser("video", help="prompt -> video (.mp4 / .gif / .webp) with a text-to-video model")
    p.add_argument("prompt")
    p.add_argument("--model", default="tiny-video", help="repo id | folder | " + " | ".join(VIDEO_MODEL_NAMES))
    p.add_argument("--negative", default=None)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT, multiples of 8 (default: the model's; zeroscope: 576x320)")
    p.add_argument("--fps", type=float, default=8)
    p.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=9.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeu", default=None, help="a preset name (video) or b1,b2,s1,s2")
    p.add_argument("--freeu-mapping", choices=["official", "diffusers"], default=None)
    p.add_argument("--freeu-version", type=int, choices=[1, 2], default=None)
    p.add_argument("--compare-freeu", action="store_true", help="same seed without and with FreeU, side by side")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="minunet.mp4", help=".mp4 (needs minunet[video]), .gif or .webp")
    p.set_defaults(func=cmd_video)


def add_image_arguments(p):
    """generate's img2img, inpainting, refiner, batch and negative micro-conditioning options."""
    p.add_argument("--image", default=None, help="img2img: start from this picture (with --mask: repaint it)")
    p.add_argument("--mask", default=None, help="inpainting: white repaints, black keeps; the --image's size")
    p.add_argument("--strength", type=float, default=None,
                   help="how much of --image to change (default 0.8 / SDXL 0.3; inpainting 1.0 / SDXL 0.9999)")
    p.add_argument("--padding-mask-crop", type=int, default=None,
                   help="inpainting: generate only the mask's box grown by this many pixels, paste it back")
    p.add_argument("--refiner", default=None, help="a refiner MODEL that finishes the base's run (SDXL refiner)")
    p.add_argument("--high-noise-frac", type=float, default=0.8,
                   help="with --refiner: the fraction of the denoising the base does (default 0.8)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (OUT-0.png, OUT-1.png, ...)")
    p.add_argument("--negative-original-size", default=None, help="SDXL: WIDTHxHEIGHT for the negative ids")
    p.add_argument("--negative-target-size", default=None, help="SDXL: WIDTHxHEIGHT for the negative ids")
    p.add_argument("--negative-crops", default=None, help="SDXL: TOP,LEFT for the negative ids")


def build_parser():
    ap = argparse.ArgumentParser(prog="minunet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("generate", help="prompt -> PNG (parameters in its text metadata)")
    p.add_argument("prompt")
    p.add_argument("--model", default="tiny", help="repo id | folder | file.safetensors | " + " | ".join(MODEL_NAMES))
    p.add_argument("--negative", default=None)
    p.add_argument("--sampler", default="euler", choices=list(SAMPLERS))
    p.add_argument("--karras", action="store_true", help="Karras sigmas (euler, euler_a, dpmpp_2m)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's, 7.5 SD / 5.0 SDXL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-skip", type=int, default=None, help="use the text encoder's state this many layers earlier")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default: the model's)")
    p.add_argument("--freeu", default=None, help="a preset name or b1,b2,s1,s2")
    p.add_argument("--freeu-mapping", choices=["official", "diffusers"], default=None)
    p.add_argument("--freeu-version", type=int, choices=[1, 2], default=None)
    p.add_argument("--compare-freeu", action="store_true", help="same seed without and with FreeU, side by side")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="minunet.png")
    add_lora_arguments(p)
    add_upscale_arguments(p)
    add_image_arguments(p)
    p.set_defaults(func=cmd_generate)
    add_video_parser(sub)
    p = sub.add_parser("parity", help="per-block largest difference between minunet and diffusers on your weights")
    p.add_argument("model", help="a .safetensors file, a diffusers folder, a Hub repo id, or tiny")
    p.add_argument("--size", default=None, help="image WIDTHxHEIGHT the latents stand for (default 256x256)")
    p.set_defaults(func=cmd_parity)
    p = sub.add_parser("inspect", help="structure, dtypes, parameters, key coverage, official-file check")
    p.add_argument("file", nargs="?")
    p.add_argument("--demo", action="store_true", help="inspect a tiny random file written on the fly")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of a file whose size is an official one")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check-values", action="store_true", help="scan every tensor and list those with NaN or Inf")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("convert", help="a pickled .ckpt/.bin/.pt/.pth -> .safetensors (tensors only, verified)")
    p.add_argument("input", help="the pickled checkpoint (read with torch.load(weights_only=True): no code runs)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="cast the floating tensors (default: keep them)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("download", help="fetch an official checkpoint and verify its SHA-256")
    p.add_argument("name", help=", ".join(OFFICIAL))
    p.set_defaults(func=cmd_download)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .io import CheckpointError
    from .checks import NonFiniteError
    try:
        args.func(args)
    except UsageError as e:  # the command line: exit 2, as argparse's own errors
        print(f"minunet: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteError, RuntimeError, OSError) as e:  # the model, the machine: exit 1
        print(f"minunet: error: {e}", file=sys.stderr)
        return 1
    return 0
