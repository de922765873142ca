"""What the commands share: the usage error, the help format, the official file names, and the size / FreeU /
device / output-path arguments."""
import argparse
import dataclasses
from pathlib import Path


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the descriptions' line breaks and shows every option's default (where its help does not
    already say it; flags and options without a default show none)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def check_out_path(flag, out):
    """An output file that can be written, checked before any model loads: not a folder, and its folder (or the
    nearest existing folder above it, where the missing ones will be made) takes a new file."""
    import tempfile

    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{flag} {out}: is a directory; give a file name, e.g. {out / ('minunet' + '.png')}")
    above = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    if not above.is_dir():
        raise UsageError(f"{flag} {out}: {above} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=above).close()
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot write in {above} ({e.strerror or e})") from None
    return out


def check_finite(flag, value, minimum=None):
    """A finite number (>= minimum) for a float option, e.g. --cfg nan is refused."""
    import math

    if value is not None and (not math.isfinite(value) or (minimum is not None and value < minimum)):
        raise UsageError(f"{flag} {value}: must be a finite number" + (f" >= {minimum}" if minimum is not None else ""))
    return value


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
    from ..freeu import FreeU

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


def add_freeu_arguments(p, presets="a preset name"):
    p.add_argument("--freeu", default=None, help=f"{presets} or b1,b2,s1,s2")
    p.add_argument("--freeu-mapping", choices=["official", "diffusers"], default=None,
                   help="which decoder resnets get stage 1 / 2 (default: the preset's, else official)")
    p.add_argument("--freeu-version", type=int, choices=[1, 2], default=None,
                   help="backbone factor rule (default: the preset's, else 1)")
    p.add_argument("--compare-freeu", action="store_true", help="same seed without and with FreeU, side by side")


def add_dtype_device_arguments(p):
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="auto: bfloat16 on a CPU that computes it natively, float16 on CUDA, else float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, ... (default: cpu)")


def add_speed_arguments(p, tome=True):
    p.add_argument("--deepcache", type=int, default=None, metavar="N",
                   help="DeepCache: the full UNet every N steps, only its shallow branch between (e.g. 3)")
    p.add_argument("--deepcache-branch", type=int, default=0, metavar="B",
                   help="DeepCache's cache_branch_id: the branch's depth (default 0, the shallowest)")
    if tome:
        p.add_argument("--tome", type=float, default=None, metavar="RATIO",
                       help="token merging: self-attention on 1 - RATIO of the tokens at full resolution (e.g. 0.5)")


def check_speed_arguments(args):
    """--deepcache / --deepcache-branch / --tome values, checked before any model loads."""
    from ..blocks.tome import ToMe
    from ..models.deepcache import DeepCache

    try:
        if args.deepcache is not None:
            DeepCache(args.deepcache, args.deepcache_branch)
        if getattr(args, "tome", None) is not None:
            ToMe(args.tome)
    except ValueError as e:
        flag = "--tome" if "ToMe" in str(e) else "--deepcache-branch" if "branch" in str(e) else "--deepcache"
        raise UsageError(f"{flag}: {e}") from None


def apply_speed_arguments(pipe, args):
    """DeepCache / token merging on a loaded pipeline; a branch deeper than the model is a usage error."""
    try:
        if args.deepcache is not None:
            pipe.enable_deepcache(args.deepcache, args.deepcache_branch)
        if getattr(args, "tome", None) is not None:
            pipe.enable_tome(args.tome)
    except ValueError as e:
        raise UsageError(f"--deepcache-branch {args.deepcache_branch}: {e}") from None


def freeu_from_args(args):
    """--freeu / --freeu-mapping / --freeu-version -> a FreeU or None; --compare-freeu needs one."""
    freeu = parse_freeu(args.freeu, args.freeu_mapping, args.freeu_version)
    if args.compare_freeu and freeu is None:
        raise UsageError("--compare-freeu needs --freeu PRESET or b1,b2,s1,s2")
    return freeu
