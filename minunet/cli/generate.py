"""`minunet generate`: prompt -> PNG, with img2img / inpainting (--image, --mask), a refiner, the x2 upscaler,
LoRAs and FreeU; the PNG carries A1111's `parameters` text and the exact settings as JSON (cli/parameters.py), and
`--from-png` repeats a generation from either."""
import argparse
import dataclasses
from pathlib import Path

from ..schedulers.samplers import SAMPLERS  # the one sampler table (light: no torch model code)
from . import parameters
from ..loading.precision import resolve_dtype
from .common import (OFFICIAL, UsageError, add_dtype_device_arguments, add_freeu_arguments, add_speed_arguments,
                     apply_speed_arguments, check_out_path, check_speed_arguments, freeu_from_args, parse_device,
                     parse_size)

MODEL_NAMES = ("tiny", "tiny-inpainting", "tiny-random", "tiny-random-inpainting", *OFFICIAL)
STEPS, TINY_STEPS = 30, 10  # default sampling steps; the random-weight tiny models make noise at any count
UPSCALE_STEPS, UPSCALE_CFG = 75, 9.0  # diffusers' defaults for the x2 upscaler
TINY_UPSCALE_STEPS, TINY_UPSCALE_CFG = 3, 1.0  # --upscale tiny / tiny-random: pipelines.upscale.TINY_DEFAULTS
TINY_UPSCALERS = ("tiny", "tiny-random")
PICKLES = (".ckpt", ".bin", ".pt", ".pth")


def add_parser(sub):
    p = sub.add_parser("generate", help="prompt -> PNG (parameters in its text metadata)")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (optional with --from-png)")
    p.add_argument("--from-png", default=None, metavar="FILE",
                   help="repeat the generation recorded in a PNG (minunet's or A1111's parameters); options given "
                        "here override the PNG's")
    p.add_argument("--prompts", default=None, metavar="FILE", help="a text file, one prompt per line: OUT-0.png, "
                   "OUT-1.png, ... (under torchrun the prompts are split over the ranks)")
    p.add_argument("--model", default="tiny", help="repo id | folder | file.safetensors | " + " | ".join(MODEL_NAMES))
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--sampler", default="euler", choices=list(SAMPLERS), help="sampler")
    p.add_argument("--karras", action="store_true", help="Karras sigmas (euler, euler_a, dpmpp_2m)")
    p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default: {STEPS}; tiny-random models: "
                   f"{TINY_STEPS})")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's: 7.5 SD, 5.0 SDXL, 3 --model tiny)")
    p.add_argument("--seed", type=int, default=0, help="-1: a random seed (printed and recorded); with "
                   "--num-images N image i gets seed + i, as A1111")
    p.add_argument("--clip-skip", type=int, default=None, help="use the text encoder's state this many layers earlier")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default: the model's)")
    add_freeu_arguments(p)
    add_dtype_device_arguments(p)
    add_speed_arguments(p)
    p.add_argument("--out", default="minunet.png", help="the PNG to write (--num-images N: OUT-0.png, ...)")
    add_lora_arguments(p)
    add_upscale_arguments(p)
    add_image_arguments(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args):
    import torch

    if args.from_png is not None:
        apply_png(args)
    prompts = read_prompts(args)
    size = parse_size(args.size) if args.size else None
    check_generate_args(args)
    freeu = freeu_from_args(args)
    inputs = image_inputs(args)  # --image / --mask, checked before any model loads
    pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
    if args.upscale is not None and pipe.family not in ("sd1", "sd2"):
        raise UsageError(f"--upscale {args.upscale}: the x2 latent upscaler takes SD 1.x / 2.x latents; --model "
                         f"{args.model} is an {pipe.family} model")
    apply_loras(pipe, args)
    apply_speed_arguments(pipe, args)
    check_image_inputs(pipe, args)
    if args.karras:
        pipe.schedule = dataclasses.replace(pipe.schedule, use_karras_sigmas=True)
    refiner = load_refiner(pipe, args)
    if args.upscale is not None:  # SD latents -> the x2 latent upscaler, no VAE round trip
        pipe = UpscaledPipeline(pipe, load_upscaler(args.upscale, args, resolve_dtype(args.dtype, args.device)), args)
    width, height = size or default_size(args, inputs) or (None, None)
    cfg, strength = (pipe.pipe if args.upscale is not None else pipe).defaults(args.cfg, args.strength,
                                                                                 args.mask is not None)
    run = (pipe, height, width, freeu, inputs, refiner, cfg, strength)
    if prompts is None:
        return generate_one(args, run, args.out)
    from ..training import distributed

    world = distributed.start(args.device)
    try:  # prompt i -> OUT-i.png on the rank i % N, each as `minunet generate PROMPT_i` with the same options
        for i, prompt in world.split(prompts):
            args.prompt = prompt
            out = Path(args.out)
            generate_one(args, run, out.with_name(f"{out.stem}-{i}{out.suffix}"))
        world.barrier()
    finally:
        distributed.stop(world)


def generate_one(args, run, out_path):
    """The images of args.prompt, saved as out_path (OUT-i for --num-images)."""
    pipe, height, width, freeu, inputs, refiner, cfg, strength = run
    if args.compare_freeu:
        images = [side_by_side(a, b) for a, b in zip(run_pipeline(pipe, args, height, width, None, inputs, refiner),
                                                      run_pipeline(pipe, args, height, width, freeu, inputs, refiner))]
    else:
        images = run_pipeline(pipe, args, height, width, freeu, inputs, refiner)
    hashes = parameters.model_hash(args.model), [parameters.lora_hash(path) for path, _ in args.lora]
    for i, (out, image) in enumerate(zip(output_paths(out_path, len(images)), images)):
        size = (image.width // 2, image.height) if args.compare_freeu else image.size
        s = parameters.settings(args, seed=args.seed + i, cfg=cfg, strength=strength, size=size, freeu=freeu)
        save_png(image, s, out, *hashes, panels=args.compare_freeu)
        print(f"wrote {out} ({image.width}x{image.height}, seed {args.seed + i})" +
              (" -- left without FreeU, right with" if args.compare_freeu else ""))


def read_prompts(args):
    """--prompts FILE -> its non-empty lines, or None when the prompt is given on the command line (one of them)."""
    if args.prompt is not None and args.prompts is not None:
        raise UsageError("give a PROMPT or --prompts FILE, not both")
    if args.prompts is None:
        if args.prompt is None:
            raise UsageError("generate: give a PROMPT (or --prompts FILE, or --from-png FILE)")
        return None
    path = Path(args.prompts)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts {path}: cannot read it as UTF-8 text ({type(e).__name__})") from None
    prompts = [line for line in lines if line]
    if not prompts:
        raise UsageError(f"--prompts {path}: no prompts in it (one per line)")
    return prompts


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

    def seeds():  # image i from seed + i alone (A1111's convention): --seed S+i repeats it by itself
        return [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)]
    try:
        if refiner is None:
            return pipe(args.prompt, generator=seeds(), **kw).images
        latents = pipe(args.prompt, generator=seeds(), denoising_end=args.high_noise_frac, output_type="latent",
                       **kw).images
        kw.update(image=latents, denoising_start=args.high_noise_frac)
        return refiner(args.prompt, generator=seeds(), **kw).images
    except CheckpointError:  # the model, not the command line
        raise
    except (ValueError, TypeError) as e:  # bad --steps, --clip-skip, ...: the pipeline's argument checks
        raise UsageError(str(e)) from None


def check_generate_args(args):
    """Command-line values the pipeline would take but cannot use: caught before any model loads."""
    import math

    from PIL import Image

    if args.seed == -1:  # A1111's convention: a random seed, printed and recorded
        import secrets

        args.seed = secrets.randbelow(2**32)
        print(f"minunet: --seed -1: random seed {args.seed}")
    if not 0 <= args.seed <= 2**64 - args.num_images:
        raise UsageError(f"--seed {args.seed}: must be -1 (random) or an integer from 0 to 2**64 - 1 (minus "
                         "--num-images - 1: image i uses seed + i)")
    if args.cfg is not None and not math.isfinite(args.cfg):
        raise UsageError(f"--cfg {args.cfg}: the guidance scale must be a finite number")
    if args.upscale is not None and args.refiner is not None:
        raise UsageError("--upscale and --refiner: give one (the upscaler takes the base's latents)")
    if args.karras and args.sampler == "ddim":
        raise UsageError("--karras with --sampler ddim: DDIM steps on its own timestep grid and takes no Karras "
                         "sigmas; use --sampler euler, euler_a or dpmpp_2m, or drop --karras")
    tiny = args.model.startswith("tiny-random")  # the trained tiny model takes the usual default
    args.steps = args.steps if args.steps is not None else TINY_STEPS if tiny else STEPS
    check_upscale_args(args)
    check_loras(args.lora)
    out = check_out_path("--out", args.out)
    Image.init()
    if out.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"--out {out}: unknown image extension '{out.suffix}' (use .png, .jpg, .webp, ...)")
    args.device = parse_device(args.device)
    check_speed_arguments(args)


def load_pipeline(model, dtype=None, device=None, flag="--model", **shared):
    """--model: 'tiny' (the shipped trained tiny model, 32 px shapes; 'tiny-inpainting': its trained 9-channel
    twin), 'tiny-random' ('tiny-random-inpainting': its 9-channel twin), an official name (downloaded once into
    the Hub cache), a folder, a file or a repo id.
    `shared`: loaded modules to use instead of loading them (--refiner)."""
    from ..pipelines.image import Pipeline

    if model == "tiny":
        return Pipeline.tiny(dtype=dtype, device=device)
    if model == "tiny-inpainting":
        return Pipeline.tiny_inpainting(dtype=dtype, device=device)
    if model in ("tiny-random", "tiny-random-inpainting"):
        print(f"minunet: {flag} {model} is a small RANDOM-weight model: it makes noise, not pictures.")
        pipe = Pipeline.tiny_random(in_channels=9 if model == "tiny-random-inpainting" else 4)
        for module in (pipe.unet, pipe.vae, pipe.text):  # --dtype / --device as for any other model
            module.to(device=device, dtype=resolve_dtype(dtype, device))
        return pipe
    if model in OFFICIAL:
        from ..loading.io import hub_download
        repo, filename, _ = OFFICIAL[model]
        path = hub_download(repo, [filename], subject=f"{flag} {model} ({filename} of {repo})")
        return Pipeline.from_single_file(path, dtype=dtype, device=device, **shared)
    path = Path(model)
    if path.is_dir():
        return Pipeline.from_pretrained(path, dtype=dtype, device=device, **shared)
    if path.suffix == ".safetensors" or path.suffix in PICKLES:  # a pickle is refused with the convert recipe
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


def save_png(image, s, out, model_hash=None, lora_hashes=(), panels=False):
    """The PNG with A1111's `parameters` text and the exact settings `s` (parameters.settings) as JSON. With
    --compare-freeu the text describes the right panel (FreeU on) and says so; the JSON lists both panels."""
    text = parameters.a1111_text(s, model_hash, lora_hashes)
    if panels:
        text += ", Comparison: left without FreeU / right with FreeU"
        s = {**s, "compare_freeu": True, "panels": [{**s, "freeu": None, "freeu_mapping": None,
                                                     "freeu_version": None}, dict(s)]}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, pnginfo=parameters.png_info(s, text))


def apply_png(args):
    """--from-png: the PNG's settings for every option not given on the command line."""
    from ..loading.lora import parse_lora_arg

    given = args.given
    found = parameters.read_png(args.from_png)
    found = parameters.resolve_a1111(found, given, args.from_png)
    found.pop("panels", None)
    for dest, value in found.items():
        if dest not in given:
            setattr(args, dest, [parse_lora_arg(t) for t in value] if dest == "lora" else value)


def lora_arg(text):
    """--lora FILE[:SCALE] for argparse: a bad SCALE is a usage error with its own message."""
    from ..loading.lora import parse_lora_arg

    try:
        return parse_lora_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_lora_arguments(p):
    p.add_argument("--lora", action="append", default=[], type=lora_arg, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors (kohya / A1111 or diffusers / PEFT) on the UNet and text encoders, "
                        "at SCALE (default 1.0); repeatable")


def check_loras(loras):
    """Every --lora file exists (a usage error, exit 2, as a missing --model) and is a .safetensors file."""
    for path, _ in loras:
        if not path.is_file():
            raise UsageError(f"--lora {path}: no such file")


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
                   help="tiny (the trained tiny upscaler, for --model tiny: 32 -> 64 px) | tiny-random | x2 "
                        "(stabilityai/sd-x2-latent-upscaler) | a diffusers folder | a Hub repo id")
    g.add_argument("--upscale-steps", type=int, default=None,
                   help=f"upscaler steps (default: {UPSCALE_STEPS}, diffusers'; with --upscale tiny: {TINY_UPSCALE_STEPS})")
    g.add_argument("--upscale-cfg", type=float, default=None,
                   help=f"upscaler guidance (default: {UPSCALE_CFG:g}, diffusers'; with --upscale tiny: "
                        f"{TINY_UPSCALE_CFG:g}; 0 = empty prompt, as the documented examples)")
    g.add_argument("--upscale-revision", default=None, help="Hub ref of a repo id given to --upscale")


def check_upscale_args(args):
    """The upscaler's defaults (the tiny ones for the tiny upscalers), and the tiny upscaler only on the latents
    it was trained on (the tiny model's VAE)."""
    tiny = args.upscale in TINY_UPSCALERS
    if args.upscale_steps is None:
        args.upscale_steps = TINY_UPSCALE_STEPS if tiny else UPSCALE_STEPS
    if args.upscale_cfg is None:
        args.upscale_cfg = TINY_UPSCALE_CFG if tiny else UPSCALE_CFG
    if args.upscale == "tiny" and args.model != "tiny":
        raise UsageError(f"--upscale tiny with --model {args.model}: the tiny upscaler was trained on the latents of "
                         "--model tiny (its VAE); use --model tiny, or --upscale tiny-random for a random-weight one")


def load_upscaler(model, args, dtype):
    from ..pipelines.upscale import UpscalePipeline

    if model == "tiny":
        return UpscalePipeline.tiny(dtype=dtype, device=args.device)
    if model == "tiny-random":
        print("minunet: --upscale tiny-random is a small RANDOM-weight upscaler: it makes noise, not pictures.")
        return UpscalePipeline.tiny_random()
    repo, revision = UPSCALERS.get(model, (model, args.upscale_revision))
    if Path(repo).is_dir() or (repo.count("/") == 1 and not Path(repo).exists()):
        return UpscalePipeline.from_pretrained(repo, dtype=dtype, device=args.device, revision=revision)
    raise UsageError(f"--upscale {model}: not a folder, Hub repo id or known name ({', '.join(TINY_UPSCALERS)}, "
                     f"{', '.join(UPSCALERS)})")


class UpscaledPipeline:
    """A Pipeline whose latents go on to the upscaler, with the same prompt and generator (the API page's chain);
    FreeU settings go to the first pipeline."""

    def __init__(self, pipe, upscaler, args):
        self.pipe, self.upscaler, self.args = pipe, upscaler, args
        self.enable_freeu, self.disable_freeu = pipe.enable_freeu, pipe.disable_freeu

    def __call__(self, prompt, *, negative_prompt=None, generator=None, **kwargs):
        latents = self.pipe(prompt, negative_prompt=negative_prompt, generator=generator, output_type="latent",
                            **kwargs).images
        n = len(latents)  # --num-images: one prompt per image latents
        return self.upscaler([prompt] * n, image=latents, negative_prompt=None if negative_prompt is None else
                             [negative_prompt] * n, generator=generator,
                             num_inference_steps=self.args.upscale_steps, guidance_scale=self.args.upscale_cfg)
