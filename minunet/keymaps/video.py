"""Video UNet key map: the original ModelScope layout (`text2video_pytorch_model`, unet_sd.py) <-> minunet
(= diffusers UNet3DConditionModel) names, as data, in the image UNet key map's form (keymaps/unet.py).

Where ModelScope differs from the image UNet's original layout:
- `input_blocks.0` holds conv_in (`.0`) and transformer_in (`.1`);
- each layer is [ResBlock, spatial transformer, temporal transformer] (`.0`, `.1`, `.2`), and the temporal conv
  lives INSIDE the ResBlock as `temopral_conv` (sic: the original's spelling);
- the downsampler is the whole input block (`input_blocks.{k}.op`, no `.0`); the mid block is
  [ResBlock, spatial, temporal, ResBlock] (`middle_block.0` .. `.3`); the upsampler follows the layer's modules
  (`output_blocks.{k}.3.conv` with attention, `.1.conv` without);
- the temporal transformers' proj_in / proj_out are Conv1d (kernel 1) there and Linear here: (O, I, 1) <-> (O, I).
Keys may carry the `model.diffusion_model.` prefix of a whole-model checkpoint or none (the published file).
"""
import re

from .unet import TOP, map_by_prefixes

OPTIONAL_PREFIX = "model.diffusion_model."
MARKER = "temopral_conv"   # present in every ModelScope ResBlock; what tells a video checkpoint apart
# minunet keys whose tensor is a Conv1d weight (O, I, 1) in the original
CONV1D = re.compile(r"^(transformer_in|.*\.temp_attentions\.\d+)\.proj_(in|out)\.weight$")


def _layer(orig, ours_block, j, attention):
    """One layer: ResBlock (with its temporal conv), and with attention the spatial and temporal transformers."""
    out = [(f"{orig}.0", f"{ours_block}.resnets.{j}", "resnet"),
           (f"{orig}.0.{MARKER}", f"{ours_block}.temp_convs.{j}", "plain")]
    if attention:
        out += [(f"{orig}.1", f"{ours_block}.attentions.{j}", "attn"),
                (f"{orig}.2", f"{ours_block}.temp_attentions.{j}", "attn")]
    return out


def block_prefixes(cfg):
    """[(original prefix, minunet prefix, kind)] for every block of a VideoUNetConfig."""
    n, L = len(cfg.block_out_channels), cfg.layers_per_block
    out = [(a, b, "plain") for a, b in TOP if not a.startswith("label_emb")]
    out.append(("input_blocks.0.1", "transformer_in", "attn"))
    for i in range(n):
        for j in range(L):
            out += _layer(f"input_blocks.{1 + i * (L + 1) + j}", f"down_blocks.{i}", j, cfg.attention_levels[i])
        if i < n - 1:
            out.append((f"input_blocks.{(i + 1) * (L + 1)}.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
    out += _layer("middle_block", "mid_block", 0, True)
    out += [("middle_block.3", "mid_block.resnets.1", "resnet"),
            (f"middle_block.3.{MARKER}", "mid_block.temp_convs.1", "plain")]
    for i in range(n):
        attention = cfg.attention_levels[n - 1 - i]
        for j in range(L + 1):
            out += _layer(f"output_blocks.{i * (L + 1) + j}", f"up_blocks.{i}", j, attention)
        if i < n - 1:
            k = i * (L + 1) + L
            out.append((f"output_blocks.{k}.{3 if attention else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv",
                        "plain"))
    return out


def video_key_map(model_keys, cfg):
    """{original key (no prefix): minunet key} covering exactly `model_keys`."""
    return map_by_prefixes(model_keys, block_prefixes(cfg))


def to_minunet(tensor, key):
    """An original tensor as the minunet parameter `key` holds it (Conv1d kernel-1 weights -> Linear)."""
    return tensor[..., 0] if CONV1D.match(key) and tensor.ndim == 3 else tensor


def to_original(tensor, key):
    return tensor[..., None] if CONV1D.match(key) and tensor.ndim == 2 else tensor
