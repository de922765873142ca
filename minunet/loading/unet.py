"""load_unet: one entry point for diffusers folders, original single files and Hub repo ids.

Models are built on the meta device (no memory) and the file's memory-mapped tensors are assigned into them,
so a load costs one copy of the weights at most (none when dtype and device already match the file).
"""
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..keymaps import count_indices, input_levels
from ..keymaps.unet import PREFIX, unet_key_map
from ..models.config import UNetConfig, describe
from ..models.kunet import KUNet
from ..models.unet import UNet
from ..models.video import VideoUNet
from . import video
from .configs import is_kunet_config, is_video_config, kunet_config, unet_config, video_config
from .io import (check_device, hub_download, load_folder_weights, load_into, load_mapped, looks_like_repo_id,
                 load_safetensors, read_header, read_json, refuse_pickle)
from .precision import auto_channels_last, resolve_dtype


def load_unet(source, *, dtype=None, device=None, variant=None, config=None) -> UNet:
    """Load a UNet from a diffusers folder (model folder or its unet/), an original .safetensors file,
    or a Hugging Face Hub repo id. `variant="fp16"` picks diffusion_pytorch_model.fp16.safetensors. A diffusers
    folder of the x2 latent upscaler gives its KUNet (minunet/models/kunet.py); a video UNet (UNet3DConditionModel
    config, or a ModelScope-layout file) gives a minunet.models.video.VideoUNet.
    `config` (a UNetConfig) overrides what a single file's shapes say (heads and upcast are not in shapes).
    dtype: None (the file's), a torch dtype, or "auto" (loading/precision.py: bfloat16 on a CPU with native bf16
    and the image UNet in channels_last, float16 on CUDA, float32 otherwise)."""
    check_device("load_unet: device", device)
    model = _load_unet(str(source), resolve_dtype(dtype, device), device, variant, config)
    return auto_layout(model, dtype, device)


def auto_layout(model, dtype, device):
    """The image UNet in channels_last where dtype="auto" asks for it (loading/precision.py)."""
    if isinstance(model, UNet) and auto_channels_last(dtype, device):
        model.to(memory_format=torch.channels_last)
    return model


def _load_unet(source, dtype, device, variant, config):
    refuse_pickle(source)
    path = Path(source)
    if path.is_dir():
        return _load_diffusers_folder(path, dtype, device, variant)
    if path.is_file():
        return _load_single_file(path, dtype, device, config)
    if looks_like_repo_id(source):
        weights = f"diffusion_pytorch_model.{variant}.safetensors" if variant else "diffusion_pytorch_model.safetensors"
        config = hub_download(source, ["config.json"], subfolder="unet")
        hub_download(source, [weights], subfolder="unet")
        return _load_diffusers_folder(config.parent, dtype, device, variant)
    raise CheckpointError(f"{source}: no such file or folder, and not a Hub repo id ('owner/name')")


def _load_diffusers_folder(path, dtype, device, variant):
    if (path / "unet" / "config.json").is_file():
        path = path / "unet"
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (nor unet/config.json): not a diffusers UNet folder")
    raw = read_json(config_file, "UNet config")
    if is_video_config(raw):  # UNet3DConditionModel (ModelScope text-to-video, zeroscope)
        model_class, config = VideoUNet, video_config(raw, source=str(config_file))
    elif is_kunet_config(raw):  # the x2 latent upscaler's K-UNet (minunet/models/kunet.py)
        model_class, config = KUNet, kunet_config(raw, source=str(config_file))
    else:
        model_class, config = UNet, unet_config(raw, source=str(config_file))
    state, file = load_folder_weights(path, "diffusion_pytorch_model", variant)
    with torch.device("meta"):
        model = model_class(config)
    return load_into(model, state, file, dtype, device).eval()


def load_kunet_file(path, *, dtype=None, device=None) -> KUNet:
    """A K-UNet in one safetensors file: diffusers' tensor names, its diffusers config.json as the `config`
    metadata string (the tiny upscaler's file, written by minunet.training.tiny_upscaler). Loaded strictly."""
    import json

    from safetensors import safe_open

    check_device("load_kunet_file: device", device)
    read_header(path)  # the header checks first: one clear line for a file that is not safetensors
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        raw = json.loads(meta["config"])
        config = kunet_config(raw, source=f"{path} (metadata 'config')")
    except (KeyError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: no usable K-UNet config in the metadata key 'config' ({e}); expected the "
                              "diffusers config.json of a K-UNet, as `minunet train-tiny --model tiny-upscaler` "
                              "writes it") from None
    with torch.device("meta"):
        model = KUNet(config)
    return load_into(model, load_safetensors(path), path, resolve_dtype(dtype, device), device).eval()


def load_unet_single_file(path, *, dtype=None, device=None, config=None) -> UNet:
    """The UNet of an original checkpoint (`model.diffusion_model.*`); config read from the shapes unless given.
    dtype as load_unet's."""
    check_device("load_unet: device", device)
    return auto_layout(_load_single_file(path, resolve_dtype(dtype, device), device, config), dtype, device)


def _load_single_file(path, dtype, device, config):
    header, _, _ = read_header(path)
    if video.is_video_checkpoint(header):  # ModelScope layout (`temopral_conv` in every ResBlock)
        return video.load_video_unet_single_file(path, dtype=dtype, device=device, config=config)
    keys = [k for k in header if k.startswith(PREFIX)]
    if not keys:
        prefixes = sorted({k.split(".")[0] for k in header})
        raise CheckpointError(f"{path}: no '{PREFIX}*' tensors, so no UNet in the original layout "
                              f"(top-level names found: {prefixes[:10]}). A diffusers UNet file goes with its "
                              "config.json in a folder: pass the folder.")
    shapes = {k[len(PREFIX):]: header[k]["shape"] for k in keys}
    config = config or config_from_shapes(shapes, path)
    return load_mapped(path, UNet, config, keys, PREFIX, unet_key_map,
                       f"UNet keys under '{PREFIX}' for the detected {describe(config)}", dtype, device)


def config_from_shapes(shapes, source="state dict"):
    """Read a UNetConfig off original-layout tensor shapes (keys without 'model.diffusion_model.'), ComfyUI-style:
    widths from conv weights, depths by counting blocks, context width from attn2.to_k, projection kind from the
    rank of proj_in. Head counts are not in the shapes: 8 heads for 1x1-conv projections (SD 1.x), head size 64
    for linear ones (SD 2.x, SDXL), as in every official model."""
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"{source}: unsupported UNet architecture: expected '{PREFIX}{key}', not found")
        return shapes[key]

    conv_in = need("input_blocks.0.0.weight")
    for marker in ("label_emb.weight", "input_hint_block.0.weight", "input_blocks.1.0.time_stack.0.in_layers.0.weight"):
        if marker in shapes:
            raise CheckpointError(f"{source}: unsupported UNet architecture ('{PREFIX}{marker}' found: class-label, "
                                  "ControlNet or video UNets are not SD 1.x / 2.x / SDXL)")
    if len(conv_in) != 4:
        raise CheckpointError(f"{source}: unsupported UNet architecture (conv_in weight has shape {conv_in})")
    n, n_in, L, first = input_levels(shapes, r"input_blocks\.(\d+)\.0\.op\.weight")
    if L is None:
        raise CheckpointError(f"{source}: unsupported UNet architecture ({n_in} input blocks for {n} levels)")
    widths = tuple(need(f"input_blocks.{k}.0.out_layers.3.weight")[0] for k in first)
    attn = tuple(f"input_blocks.{k}.1.proj_in.weight" in shapes for k in first)
    depth = tuple(count_indices(shapes, rf"input_blocks\.{k}\.1\.transformer_blocks\.(\d+)\.") for k in first)
    mid_depth = count_indices(shapes, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    proj = need("middle_block.1.proj_in.weight")
    linear = len(proj) == 2
    heads = tuple(max(w // 64, 1) for w in widths) if linear else (8,) * n
    adm = shapes.get("label_emb.0.0.weight")
    return UNetConfig(
        in_channels=conv_in[1], out_channels=need("out.2.weight")[0], block_out_channels=widths, layers_per_block=L,
        attention_levels=attn, transformer_depth=depth, transformer_depth_mid=mid_depth, num_heads=heads,
        context_dim=need("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1], use_linear_projection=linear,
        upcast_attention=linear and adm is None,  # SD 2.x: as the 768-v model; harmless in fp32, safer in fp16
        adm_in_channels=adm[1] if adm is not None else None,
        norm_num_groups=32)


def original_state_dict(model: UNet):
    """The model's tensors under their original single-file names (`model.diffusion_model.*`)."""
    state = model.state_dict()
    mapping = unet_key_map(list(state), model.config)
    return {PREFIX + orig: state[ours] for orig, ours in mapping.items()}
