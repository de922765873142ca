"""What is in a checkpoint: components, structure, dtypes, parameter counts, key coverage, official or not."""
import json
from collections import Counter
from pathlib import Path

from ..errors import CheckpointError
from .io import read_header
from .official import official_files, sha256
from ..keymaps.unet import PREFIX

COMPONENTS = [("unet", ("model.diffusion_model.",)), ("vae", ("first_stage_model.",)),
              ("text", ("cond_stage_model.", "conditioner.")), ("ema", ("model_ema.",))]


def component(key):
    for name, prefixes in COMPONENTS:
        if key.startswith(prefixes):
            return name
    return "other"


def inspect_file(path, check_hash=True):
    """A report (dict) on a .safetensors file in the original or diffusers layout."""
    path = Path(path)
    header, _, size = read_header(path)
    report = {"file": str(path), "bytes": size, "tensors": len(header), "components": {}}
    groups = {}
    for key, entry in header.items():
        groups.setdefault(component(key), {})[key] = entry
    for name, entries in sorted(groups.items()):
        params = sum(_numel(e["shape"]) for e in entries.values())
        dtypes = dict(Counter(e["dtype"] for e in entries.values()))
        report["components"][name] = {"tensors": len(entries), "parameters": params, "dtypes": dtypes}
    if "unet" in groups:
        report["components"]["unet"].update(_unet_structure(groups["unet"], path))
    if "vae" in groups:
        report["components"]["vae"]["structure"] = _vae_structure(header, path)
    if "text" in groups:
        from ..keymaps.text import detect_family
        found = detect_family(list(groups["text"]))
        report["components"]["text"]["structure"] = f"{found} text encoders" if found else "not recognised"
    report.update(_official(path, size, check_hash))
    return report


def _unet_structure(entries, path):
    """structure, config and key coverage of the UNet tensors (original layout)."""
    import torch

    from .unet import config_from_shapes, describe, unet_key_map
    from ..models.unet import UNet
    shapes = {k[len(PREFIX):]: e["shape"] for k, e in entries.items()}
    try:
        cfg = config_from_shapes(shapes, path)
    except CheckpointError as e:
        return {"structure": f"not loadable: {e}"}
    with torch.device("meta"):
        model = UNet(cfg)
    mapping = unet_key_map(list(model.state_dict()), cfg)
    return {"structure": describe(cfg), "config": cfg.asdict(),
            "key_coverage": {"mapped": len(set(shapes) & set(mapping)), "model": len(mapping),
                             "unknown": sorted(set(shapes) - set(mapping))[:10],
                             "missing": sorted(set(mapping) - set(shapes))[:10]}}


def _vae_structure(header, path):
    import torch

    from .vae import vae_from_state_dict
    meta = {k: torch.empty(e["shape"], device="meta") for k, e in header.items() if component(k) in ("vae", "text")}
    try:
        c = vae_from_state_dict(meta, source=path, device="meta").config
    except CheckpointError as e:
        return f"not loadable: {e}"
    return (f"AutoencoderKL widths {list(c.block_out_channels)}, {c.latent_channels} latent channels, "
            f"scaling {c.scaling_factor}")


def _official(path, size, check_hash):
    """Whether the file is an official one: by size, then (check_hash) by SHA-256."""
    known = official_files().get(size, [])
    if known and check_hash:
        digest = sha256(path)
        return {"sha256": digest, "official": next((p for p, s in known if s == digest), None)}
    if known:
        return {"official": "size matches " + ", ".join(p for p, _ in known) + " (hash not checked)"}
    return {"official": None}


def nonfinite_tensors(path, progress=True):
    """Scan every floating tensor of a .safetensors file -> [(name, NaN count, Inf count, numel)] of those with any
    non-finite value (a model with such weights generates black images)."""
    import torch
    from tqdm import tqdm

    from .io import load_safetensors

    found = []
    tensors = load_safetensors(path)
    for key, t in tqdm(sorted(tensors.items()), desc="checking values", disable=not progress, leave=False):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        flat = t.reshape(-1)
        nan = inf = 0
        for chunk in flat.split(1 << 24):  # bounded temporary memory on huge tensors
            chunk = chunk.float() if chunk.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else chunk
            nan += int(torch.isnan(chunk).sum())
            inf += int(torch.isinf(chunk).sum())
        if nan or inf:
            found.append((key, nan, inf, t.numel()))
    return found


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def format_report(report):
    lines = [f"{report['file']}: {report['bytes']:,} bytes, {report['tensors']} tensors"]
    for name, c in report["components"].items():
        lines.append(f"  {name:<6} {c['tensors']:5d} tensors {c['parameters'] / 1e6:10.1f} M parameters  "
                     f"dtypes {json.dumps(c['dtypes'])}")
        if "structure" in c:
            lines.append(f"         structure: {c['structure']}")
        if "key_coverage" in c:
            k = c["key_coverage"]
            lines.append(f"         key coverage: {k['mapped']}/{k['model']} model tensors mapped"
                         + (f"; unknown {k['unknown']}" if k["unknown"] else "")
                         + (f"; missing {k['missing']}" if k["missing"] else ""))
    if "nonfinite" in report:
        bad = report["nonfinite"]
        lines.append(f"  values: {len(bad)} tensors with NaN or Inf" + (":" if bad else " (all finite)"))
        lines += [f"    {k}: {nan} NaN, {inf} Inf of {n}" for k, nan, inf, n in bad]
    if "sha256" in report:
        lines.append(f"  sha256 {report['sha256']}")
    lines.append("  official file: " + (report["official"] or "no (size/SHA-256 match no known official file)"))
    return "\n".join(lines)
