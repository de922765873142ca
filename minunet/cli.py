"""The `minunet` command: generate, inspect, parity, download.

    minunet generate "a red fox" --model tiny --out fox.png
    minunet inspect sd_xl_base_1.0.safetensors
    minunet parity v1-5-pruned-emaonly.safetensors
    minunet download sd15
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

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


def build_parser():
    ap = argparse.ArgumentParser(prog="minunet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
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
