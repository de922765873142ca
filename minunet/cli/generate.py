"""`minunet generate`: prompt -> PNG, with img2img / inpainting (--image, --mask), a refiner, the x2 upscaler,
LoRAs and FreeU; the generation parameters go into the PNG's `parameters` text chunk."""
import dataclasses
import json
from pathlib import Path

from ..schedulers.samplers import SAMPLERS  # the one sampler table (light: no torch model code)
from ..loading.precision import resolve_dtype
from .common import (OFFICIAL, UsageError, add_dtype_device_arguments, add_freeu_arguments, add_speed_arguments,
                     apply_speed_arguments, check_speed_arguments, freeu_from_args, parse_device, parse_size)

MODEL_NAMES = ("tiny", "tiny-inpainting", *OFFICIAL)


def add_parser(sub):
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
    add_freeu_arguments(p)
    add_dtype_device_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--out", default="minunet.png")
    add_lora_arguments(p)
    add_upscale_arguments(p)
    add_image_arguments(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args):
    size = parse_size(args.size) if args.size else None
    check_generate_args(args)
    freeu = freeu_from_args(args)
    inputs = image_inputs(args)  # --image / --mask, checked before any model loads
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    apply_loras(pipe, args)
    apply_speed_arguments(pipe, args)
    check_image_inputs(pipe, args)
    if args.karras:
        pipe.schedule = dataclasses.replace(pipe.schedule, use_karras_sigmas=True)
    refiner = load_refiner(pipe, args)
    if args.upscale is not None:  # SD latents -> the x2 latent upscaler, no VAE round trip
        pipe = UpscaledPipeline(pipe, load_upscaler(args.upscale, args, resolve_dtype(args.dtype, args.device)), args)
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

    from ..errors import CheckpointError

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
    check_speed_arguments(args)


def load_pipeline(model, dtype=None, device=None, flag="--model", **shared):
    """--model: 'tiny' ('tiny-inpainting': its 9-channel twin), an official name (downloaded once into the Hub
    cache), a folder, a file or a repo id. `shared`: loaded modules to use instead of loading them (--refiner)."""
    from ..pipelines.image import Pipeline

    if model in ("tiny", "tiny-inpainting"):
        print(f"minunet: {flag} {model} is a small RANDOM-weight model: it makes noise, not pictures.")
        pipe = Pipeline.tiny(in_channels=9 if model == "tiny-inpainting" else 4)
        for module in (pipe.unet, pipe.vae, pipe.text):  # --dtype / --device as for any other model
            module.to(device=device, dtype=resolve_dtype(dtype, device))
        return pipe
    if model in OFFICIAL:
        from ..loading.io import hub_download
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

    if args.refiner is None:
        return None
    shared = {} if args.refiner.startswith("tiny") else pipe.components(
        *[n for n in ("vae", "text_encoder_2") if n in pipe.components()])
    refiner = load_pipeline(args.refiner, dtype=args.dtype, device=args.device, flag="--refiner", **shared)
    apply_speed_arguments(refiner, args)
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
              "num_images": args.num_images, "dtype": args.dtype,
              "deepcache": None if args.deepcache is None else {"cache_interval": args.deepcache,
                                                                "cache_branch_id": args.deepcache_branch},
              "tome": args.tome, "generator": "minunet"}
    meta = PngInfo()
    meta.add_text("parameters", json.dumps(params))
    out = Path(args.out if out is None else out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, pnginfo=meta)


def add_lora_arguments(p):
    from ..loading.lora import parse_lora_arg

    p.add_argument("--lora", action="append", default=[], type=parse_lora_arg, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors (kohya / A1111 or diffusers / PEFT) on the UNet and text encoders, "
                        "at SCALE (default 1.0); repeatable")


def apply_loras(pipe, args):
    for path, scale in args.lora:
        pipe.load_lora(path, scale)


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
    from ..pipelines.upscale import UpscalePipeline

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
