"""The `minunet` command: generate, inspect, parity, download.

    minunet generate "a red fox" --model tiny --out fox.png
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
    print(json.dumps(report, indent=1) if args.json else format_report(report))


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


MODEL_NAMES = ("tiny", *OFFICIAL)


def load_pipeline(model, dtype=None, device=None):
    """--model: 'tiny', an official name (downloaded once into the Hub cache), a folder, a file or a repo id."""
    from .pipeline import Pipeline

    if model == "tiny":
        print("minunet: --model tiny is a small RANDOM-weight model: it makes noise, not pictures.")
        return Pipeline.tiny()
    if model in OFFICIAL:
        from .io import hub_download
        repo, filename, _ = OFFICIAL[model]
        return Pipeline.from_single_file(hub_download(repo, [filename]), dtype=dtype, device=device)
    path = Path(model)
    if path.is_dir():
        return Pipeline.from_pretrained(path, dtype=dtype, device=device)
    if path.suffix == ".safetensors" or path.suffix in (".ckpt", ".bin", ".pt"):
        if not path.exists():
            raise UsageError(f"--model {model}: no such file")
        return Pipeline.from_single_file(path, dtype=dtype, device=device)
    if model.count("/") == 1 and not path.exists():
        return Pipeline.from_pretrained(model, dtype=dtype, device=device)
    raise UsageError(f"--model {model}: not a file, folder, Hub repo id or known name ({', '.join(MODEL_NAMES)})")


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


def cmd_generate(args):
    import torch

    size = parse_size(args.size) if args.size else None
    freeu = parse_freeu(args.freeu, args.freeu_mapping, args.freeu_version)
    if args.compare_freeu and freeu is None:
        raise UsageError("--compare-freeu needs --freeu PRESET or b1,b2,s1,s2")
    pipe = load_pipeline(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    if args.karras:
        pipe.schedule = dataclasses.replace(pipe.schedule, use_karras_sigmas=True)
    width, height = size or (None, None)
    if args.compare_freeu:
        image = side_by_side(run_pipeline(pipe, args, height, width, None), run_pipeline(pipe, args, height, width, freeu))
    else:
        image = run_pipeline(pipe, args, height, width, freeu)
    save_png(image, args, freeu)
    print(f"wrote {args.out} ({image.width}x{image.height})" +
          (" -- left without FreeU, right with" if args.compare_freeu else ""))


def run_pipeline(pipe, args, height, width, freeu):
    """One generation with the command line's settings (same seed each call), FreeU on or off."""
    import torch

    if freeu is not None:
        pipe.enable_freeu(freeu)
    else:
        pipe.disable_freeu()
    try:
        return pipe(args.prompt, negative_prompt=args.negative, height=height, width=width, sampler=args.sampler,
                    num_inference_steps=args.steps, guidance_scale=args.cfg, clip_skip=args.clip_skip,
                    generator=torch.Generator().manual_seed(args.seed)).images[0]
    except ValueError as e:  # bad --steps, --clip-skip, ...: the pipeline's message, without a traceback
        raise UsageError(str(e)) from None


def side_by_side(left, right):
    from PIL import Image

    image = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    image.paste(left, (0, 0))
    image.paste(right, (left.width, 0))
    return image


def save_png(image, args, freeu):
    """The PNG with the generation parameters in its `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    params = {"prompt": args.prompt, "negative_prompt": args.negative, "model": args.model, "sampler": args.sampler,
              "karras": args.karras, "steps": args.steps, "cfg": args.cfg, "clip_skip": args.clip_skip,
              "seed": args.seed, "size": f"{image.width}x{image.height}",
              "freeu": None if freeu is None else dataclasses.asdict(freeu), "compare_freeu": args.compare_freeu,
              "generator": "minunet"}
    meta = PngInfo()
    meta.add_text("parameters", json.dumps(params))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, pnginfo=meta)


def cmd_parity(args):
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        raise UsageError("parity needs diffusers: pip install 'minunet[test]'")
    from .parity import compare_blocks, diffusers_twin, random_inputs
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
    rows = compare_blocks(unet, theirs, x, t, ctx, added)
    print(f"{'block':<16} {'max |minunet - diffusers|':>26} {'max |diffusers|':>16}")
    for name, diff, ref in rows:
        print(f"{name:<16} {diff:26.3e} {ref:16.3e}")
    worst = max(d / max(r, 1e-12) for _, d, r in rows)
    print(f"largest difference relative to the block's output scale: {worst:.2e}")


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
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("parity", help="per-block largest difference between minunet and diffusers on your weights")
    p.add_argument("model", help="a .safetensors file, a diffusers folder, a Hub repo id, or tiny")
    p.add_argument("--size", default=None, help="image WIDTHxHEIGHT the latents stand for (default 256x256)")
    p.set_defaults(func=cmd_parity)
    p = sub.add_parser("inspect", help="structure, dtypes, parameters, key coverage, official-file check")
    p.add_argument("file", nargs="?")
    p.add_argument("--demo", action="store_true", help="inspect a tiny random file written on the fly")
    p.add_argument("--no-hash", action="store_true", help="skip the SHA-256 of a file whose size is an official one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("download", help="fetch an official checkpoint and verify its SHA-256")
    p.add_argument("name", help=", ".join(OFFICIAL))
    p.set_defaults(func=cmd_download)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .io import CheckpointError
    try:
        args.func(args)
    except (UsageError, CheckpointError) as e:
        print(f"minunet: error: {e}", file=sys.stderr)
        return 2
    return 0
