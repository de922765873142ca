"""The video UNet from a ModelScope-layout single file (load_unet dispatches here; a diffusers folder loads as the
image UNet's does), its config read off the tensor shapes, and the way back to the ModelScope layout."""
from ..errors import CheckpointError
from ..keymaps import input_levels
from ..keymaps.video import MARKER, OPTIONAL_PREFIX, to_minunet, to_original, video_key_map
from ..models.video import IN_HEADS, VideoUNet, VideoUNetConfig
from .io import load_mapped, read_header


def is_video_checkpoint(keys):
    return any(f".{MARKER}." in k for k in keys)


def video_config_from_shapes(shapes, source="state dict"):
    """A VideoUNetConfig read off ModelScope-layout shapes (keys without prefix): widths from the ResBlocks, the
    head size from transformer_in (8 heads), context width from a cross-attention, 32 norm groups."""
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"{source}: not a ModelScope video UNet: expected '{key}', not found")
        return shapes[key]

    conv_in = need("input_blocks.0.0.weight")
    n, n_in, L, first = input_levels(shapes, r"input_blocks\.(\d+)\.op\.weight")
    if L is None:
        raise CheckpointError(f"{source}: unsupported video UNet ({n_in} input blocks for {n} levels)")
    return VideoUNetConfig(
        in_channels=conv_in[1], out_channels=need("out.2.weight")[0],
        block_out_channels=tuple(need(f"input_blocks.{k}.0.out_layers.3.weight")[0] for k in first),
        layers_per_block=L, attention_levels=tuple(f"input_blocks.{k}.1.proj_in.weight" in shapes for k in first),
        head_size=need("input_blocks.0.1.proj_in.weight")[0] // IN_HEADS,
        context_dim=need("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1])


def load_video_unet_single_file(path, *, dtype=None, device=None, config=None) -> VideoUNet:
    """A ModelScope-layout .safetensors (keys bare, or under `model.diffusion_model.`; other top-level components
    next to a prefixed UNet are skipped). Convert the published pickle first (see the README)."""
    header, _, _ = read_header(path)
    prefix = OPTIONAL_PREFIX if any(k.startswith(OPTIONAL_PREFIX) for k in header) else ""
    keys = [k for k in header if k.startswith(prefix)]
    shapes = {k[len(prefix):]: header[k]["shape"] for k in keys}
    config = config or video_config_from_shapes(shapes, path)
    return load_mapped(path, VideoUNet, config, keys, prefix, video_key_map,
                       f"video UNet keys for widths {list(config.block_out_channels)}", dtype, device, to_minunet)


def original_state_dict(model: VideoUNet, prefix=""):
    """The model's tensors under their ModelScope names (Conv1d shapes where the original has them)."""
    state = model.state_dict()
    return {prefix + orig: to_original(state[ours], ours)
            for orig, ours in video_key_map(list(state), model.config).items()}
