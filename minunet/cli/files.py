"""`minunet inspect`, `parity`, `convert`, `download`: commands about checkpoint files."""
import json
import tempfile
from pathlib import Path

from .common import OFFICIAL, UsageError, parse_size


def add_parsers(sub):
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


def cmd_inspect(args):
    from ..loading.inspect import format_report, inspect_file

    path = Path(args.file) if args.file else None
    tmp = None
    if args.demo:  # a tiny random SD 1.5-structured single file, so the command runs anywhere
        import safetensors.torch as st

        from ..models.config import UNetConfig
        from ..loading.unet import original_state_dict
        from ..models.unet import UNet
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
        from ..loading.inspect import nonfinite_tensors
        report["nonfinite"] = nonfinite_tensors(path)
    print(json.dumps(report, indent=1) if args.json else format_report(report))


def cmd_parity(args):
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        raise UsageError("parity needs diffusers: pip install 'minunet[test]'")
    from .parity import compare_blocks, diffusers_twin, format_rows, random_inputs
    if args.model == "tiny":
        from ..pipelines.image import Pipeline
        unet, source = Pipeline.tiny().unet, None
    else:
        from ..loading.unet import load_unet
        path = Path(args.model)
        if not path.exists() and args.model.count("/") != 1:
            raise UsageError(f"parity: {args.model}: no such file or folder")
        unet, source = load_unet(args.model), args.model
    theirs = diffusers_twin(source, unet)
    h, w = (int(v) // 8 for v in parse_size(args.size)) if args.size else (32, 32)
    x, t, ctx, added = random_inputs(unet.config, (h, w), dtype=unet.dtype)
    print(format_rows(compare_blocks(unet, theirs, x, t, ctx, added)))


def cmd_convert(args):
    import torch

    from ..loading.convert import convert
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
    from ..loading.official import official_files, sha256
    from ..loading.io import hub_download

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
