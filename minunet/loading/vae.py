"""load_vae: the VAE from every official layout (diffusers folders, whole and standalone original checkpoints, the Hub),
configured from config.json or from the tensor shapes, loaded strictly."""
import dataclasses
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..keymaps import vae as keymap
from ..models.vae import SD, SDXL, VAE
from .configs import vae_config
from . import official
from .io import check_device, hub_download, load_into, load_safetensors, looks_like_repo_id, read_json, refuse_pickle
from .precision import resolve_dtype

WEIGHT_NAMES = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]


def load_vae(source, *, config=None, dtype=None, device=None) -> VAE:
    """A VAE from any official layout, loaded strictly:
    - a diffusers folder (the VAE folder itself, or a pipeline folder with `vae/`), new or old attention names;
    - a whole original checkpoint (`first_stage_model.*`; the UNet, text encoders, EMA and schedule keys are skipped);
    - a standalone original VAE file with no prefix (e.g. vae-ft-mse-840000-ema-pruned.safetensors);
    - a diffusers-layout .safetensors file (config.json next to it is used if present);
    - a Hub repo id (config.json and weights from `vae/`, else from the root).
    Configuration: `config` if given, else config.json, else read off the tensor shapes, with the SDXL preset's
    scaling factor when a whole checkpoint has SDXL text encoders (`conditioner.*`) or the SDXL UNet
    (`label_emb`), and the SD preset's otherwise. A standalone file has no such keys: an official one is
    recognised by size + SHA-256, any other gets SD's with a warning (pass config=VAE_SDXL for an SDXL VAE).
    dtype: None (the file's), a torch dtype, or "auto" (loading/precision.py)."""
    check_device("load_vae: device", device)
    dtype = resolve_dtype(dtype, device)
    weights, cfg_json = _locate(source)
    if config is None and cfg_json is not None:
        config = vae_config(read_json(cfg_json, "VAE config"), source=cfg_json)
    sd = load_safetensors(weights)
    base = None
    if config is None and not any(k.startswith(keymap.PREFIX) for k in sd):  # standalone: shapes cannot tell
        base = standalone_preset(weights)
    return vae_from_state_dict(sd, config=config, source=weights, dtype=dtype, device=device, base=base)


def standalone_preset(path):
    """SD or SDXL preset for a VAE file without config.json: an official file is recognised by size + SHA-256
    (minunet.weights LFS_POINTERS.tsv); any other gets SD's, with a warning that says how to pass SDXL's."""
    known = [p for p, _ in official.official_files().get(Path(path).stat().st_size, []) if p.endswith(".safetensors")]
    if known:
        digest = official.sha256(path, progress=False)
        match = next((p for p, h in official.official_files()[Path(path).stat().st_size] if h == digest), None)
        if match is not None and "vae" in match:
            return SDXL if match.startswith(("stable-diffusion-xl", "sdxl")) else SD
    warnings.warn(f"{path}: a VAE file without config.json that is not a known official file: assuming the SD 1.x / "
                  f"2.x VAE's scaling_factor {SD.scaling_factor}. For an SDXL VAE pass config=minunet.VAE_SDXL "
                  f"(scaling_factor {SDXL.scaling_factor}), or config=dataclasses.replace(minunet.VAE_SD, "
                  "scaling_factor=...) for another.", stacklevel=3)
    return SD


def vae_from_state_dict(sd, *, config=None, source="state dict", dtype=None, device=None, base=None) -> VAE:
    """A VAE from a state dict in any layout load_vae reads (tensors may be on the meta device, for checks).
    `base` (a VAEConfig) gives the fields shapes cannot tell, instead of what the keys suggest."""
    sd, layout, detected = to_diffusers_layout(sd, source)
    base = base if base is not None else detected
    if config is None:
        config = config_from_shapes(sd, base, source)
    if layout == "original":
        sd = keymap.original_to_diffusers(sd, len(config.block_out_channels), config.layers_per_block, source)
    with torch.device("meta"):
        model = VAE(config)
    return load_into(model, sd, source, dtype=dtype, device=device).eval()


def _locate(source):
    """-> (weights file, config.json or None)."""
    if looks_like_repo_id(source):
        return _from_hub(str(source))
    path = Path(source)
    refuse_pickle(path)
    if path.is_dir():
        for folder in (path / "vae", path):
            weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
            if weights is not None:
                cfg = folder / "config.json"
                return weights, cfg if cfg.is_file() else None
        raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_NAMES)} in it or in {path / 'vae'} "
                              "(a .bin folder must be converted to safetensors first)")
    cfg = path.parent / "config.json"
    return path, cfg if path.name in WEIGHT_NAMES and cfg.is_file() else None


def _from_hub(repo_id):
    last = None
    for sub in ("vae", None):  # a pipeline repo keeps its VAE in vae/, a VAE-only repo at its root
        try:
            cfg = hub_download(repo_id, ["config.json"], subfolder=sub)
            return hub_download(repo_id, WEIGHT_NAMES, subfolder=sub), cfg
        except CheckpointError as e:
            last = e
    raise CheckpointError(f"{last}. load_vae also reads local files: download the VAE (config.json and "
                          "diffusion_pytorch_model.safetensors, or a single .safetensors) and pass its local path.")


def to_diffusers_layout(sd, source):
    """Detect the layout of a raw state dict -> (state dict, "original" | "diffusers", preset for non-shape fields).
    Whole checkpoints lose their prefix and non-VAE keys; diffusers' old attention names are renamed."""
    keys = list(sd)
    if any(k.startswith(keymap.PREFIX) for k in keys):
        # SDXL: its text encoders (`conditioner.*`) or its UNet's micro-conditioning embedding (`label_emb`)
        xl = any(k.startswith(("conditioner.", "model.diffusion_model.label_emb.")) for k in keys)
        base = SDXL if xl else SD
        return keymap.split_whole_checkpoint(sd, source), "original", base
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return sd, "original", SD
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return keymap.rename_legacy_attention(sd), "diffusers", SD
    what = "a UNet / text-encoder checkpoint without a VAE" if any(
        k.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for k in keys) else "not a VAE"
    raise CheckpointError(f"{source}: {what}: no `first_stage_model.*`, `encoder.down.*` or `encoder.down_blocks.*` "
                          f"keys (found e.g. {keys[:5]}). Pass a VAE file, a diffusers vae/ folder or a whole "
                          "checkpoint.")


def config_from_shapes(sd, base=SD, source="checkpoint"):
    """Architecture read off the tensor shapes of an original- or diffusers-layout VAE state dict; the fields that
    shapes cannot tell (norm_num_groups, sample_size, scaling_factor, shift_factor, force_upcast) come from `base`."""
    block = ("encoder.down.{}.block.{}.conv1.weight" if "encoder.down.0.block.0.conv1.weight" in sd
             else "encoder.down_blocks.{}.resnets.{}.conv1.weight")
    for key in (block.format(0, 0), "encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight"):
        if key not in sd:
            raise CheckpointError(f"{source}: cannot read the VAE's shape: key '{key}' is missing")
    n = next(i for i in range(1, 100) if block.format(i, 0) not in sd)
    layers = next(j for j in range(1, 100) if block.format(0, j) not in sd)
    return dataclasses.replace(
        base, in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
        latent_channels=sd["decoder.conv_in.weight"].shape[1], layers_per_block=layers,
        block_out_channels=tuple(sd[block.format(i, 0)].shape[0] for i in range(n)),
        use_quant_conv="quant_conv.weight" in sd, use_post_quant_conv="post_quant_conv.weight" in sd)
