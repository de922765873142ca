"""The text-to-video UNet of ModelScope text-to-video-ms-1.7b and zeroscope (diffusers' UNet3DConditionModel).

It is the image UNet (minunet.unet) with frames folded into the batch, plus three temporal modules; everything
spatial is the 2-D UNet's own blocks (ResnetBlock2D, Transformer2DModel, Down/Upsample2D, the time embedding),
built by the 2-D block classes from `VideoUNetConfig.image_config()`. What the video model adds, all of it here:

    x (B, C, F, H, W) -> (B*F, C, H, W): every spatial op sees B*F images (index b * F + f); t and the text context
                         are repeated F times (repeat_interleave) to match
    conv_in -> transformer_in        a TransformerTemporalModel (8 heads x head_size) over the frames
    each layer of every block:       resnet -> temp_conv -> [spatial transformer -> temporal transformer]
        TemporalConvLayer            x + four (GroupNorm, SiLU, Conv3d (3, 1, 1)) over (B, C, F, H, W)
        TransformerTemporalModel     GroupNorm -> tokens = frames at each pixel -> self-attention twice, GEGLU -> + x
    mid block:                       resnet, temp_conv, attention, temp_attention, resnet, temp_conv
    conv_out -> (B, C, F, H, W)

The temporal modules' GroupNorms run on (B, C, F, H, W), so frames share their statistics. Attention is linear-
projection everywhere; heads = width / head_size (diffusers' `attention_head_dim` is the head size here).
Module names are diffusers', so a diffusers `unet/` loads strictly; keymaps/video.py maps the ModelScope layout.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .blocks import ModelDtypeDevice
from .blocks.attention import BasicTransformerBlock
from .blocks.resnet import TimestepEmbedding, timestep_embedding
from .blocks.unet_blocks import DownBlock, MidBlock, UpBlock, branch_parts, decoder, encoder
from .config import UNetConfig
from .freeu import FreeUMixin
from .io import CheckpointError, load_mapped, read_header
from .keymaps import count_indices
from .keymaps.video import MARKER, OPTIONAL_PREFIX, to_minunet, to_original, video_key_map

IN_HEADS = 8  # transformer_in has 8 heads of head_size whatever the width (diffusers and ModelScope hard-code it)


@dataclass(frozen=True)
class VideoUNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)     # channels per resolution level
    layers_per_block: int = 2                              # resnets per down level (up levels have one more)
    attention_levels: tuple = (True, True, True, False)    # which down levels have transformers (up: mirrored)
    head_size: int = 64                                    # every attention: heads = width / head_size
    context_dim: int = 1024                                # OpenCLIP ViT-H text tokens (as SD 2.x)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5                                 # resnets' GroupNorm (temporal convs 1e-5, transformers 1e-6)

    def __post_init__(self):
        for f in ("block_out_channels", "attention_levels"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(f"VideoUNetConfig: {len(self.block_out_channels)} levels but "
                             f"{len(self.attention_levels)} attention_levels")
        for c in self.block_out_channels:
            if c % self.head_size or c % self.norm_num_groups:
                raise ValueError(f"VideoUNetConfig: width {c} is not divisible by head_size {self.head_size} and "
                                 f"{self.norm_num_groups} norm groups")

    @property
    def time_embed_dim(self):
        return 4 * self.block_out_channels[0]

    def image_config(self) -> UNetConfig:
        """The 2-D UNet whose blocks this model is built from: the same widths, linear projections, one
        transformer block per attention, heads = width / head_size."""
        return UNetConfig(
            in_channels=self.in_channels, out_channels=self.out_channels, block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block, attention_levels=self.attention_levels,
            transformer_depth=(1,) * len(self.block_out_channels), transformer_depth_mid=1,
            num_heads=tuple(c // self.head_size for c in self.block_out_channels), context_dim=self.context_dim,
            use_linear_projection=True, norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps)

    def to_diffusers(self):
        """The equivalent diffusers UNet3DConditionModel config."""
        return dict(
            in_channels=self.in_channels, out_channels=self.out_channels,
            block_out_channels=list(self.block_out_channels), layers_per_block=self.layers_per_block,
            down_block_types=["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in self.attention_levels],
            up_block_types=["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(self.attention_levels)],
            attention_head_dim=self.head_size, cross_attention_dim=self.context_dim,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps)

    @classmethod
    def from_diffusers(cls, cfg, source="config.json"):
        """Translate a diffusers UNet3DConditionModel config; raise on any field or value minunet does not do."""
        problems = []
        for key, value in cfg.items():
            if key.startswith("_") or key in _TRANSLATED or key == "sample_size":
                continue
            if key not in _FIXED:
                problems.append(f"unknown field '{key}' = {value!r}")
            elif value not in _FIXED[key]:
                problems.append(f"'{key}' = {value!r} (supported: {_FIXED[key]})")
        head = cfg.get("attention_head_dim", 64)
        if isinstance(head, bool) or not isinstance(head, int):
            problems.append(f"'attention_head_dim' = {head!r} (the head size: one int for every level)")
        down = list(cfg.get("down_block_types", ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]))
        up = list(cfg.get("up_block_types", ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3))
        if any(t not in ("CrossAttnDownBlock3D", "DownBlock3D") for t in down):
            problems.append(f"down_block_types {down} (supported: CrossAttnDownBlock3D, DownBlock3D)")
        levels = tuple(t == "CrossAttnDownBlock3D" for t in down)
        if up != ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(levels)]:
            problems.append(f"up_block_types {up} do not mirror down_block_types {down}")
        if problems:
            raise ValueError(f"{source}: unsupported video UNet configuration: " + "; ".join(problems))
        return cls(
            in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
            block_out_channels=tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280))),
            layers_per_block=cfg.get("layers_per_block", 2), attention_levels=levels, head_size=head,
            context_dim=cfg.get("cross_attention_dim", 1024), norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5))

    def asdict(self):
        return asdict(self)


_TRANSLATED = {"in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
               "up_block_types", "attention_head_dim", "cross_attention_dim", "norm_num_groups", "norm_eps"}
_FIXED = {"act_fn": ["silu"], "downsample_padding": [1], "mid_block_scale_factor": [1], "num_attention_heads": [None],
          "time_cond_proj_dim": [None]}

MS_1_7B = VideoUNetConfig()   # ali-vilab/text-to-video-ms-1.7b; cerspense/zeroscope_v2_576w has the same structure
VIDEO_PRESETS = {"text-to-video-ms-1.7b": MS_1_7B}


# ---- what the video model adds ---------------------------------------------------------------------------------

class TemporalConvLayer(nn.Module):
    """x + conv4(conv3(conv2(conv1(x)))) over the frames, each conv = GroupNorm -> SiLU -> Conv3d kernel (3, 1, 1).

    Same maths as diffusers TemporalConvLayer (ModelScope TemporalConvBlock_v2). Index 2 of conv2..4 is a Dropout
    in the checkpoints (no weights): Identity keeps the Conv3d at index 3. Training code zero-inits conv4."""

    def __init__(self, channels, groups=32):
        super().__init__()
        def conv():
            return nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.conv1 = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), conv())   # GroupNorm eps 1e-5
        self.conv2, self.conv3, self.conv4 = (
            nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Identity(), conv()) for _ in range(3))

    def forward(self, x, frames):
        v = rearrange(x, "(b f) c h w -> b c f h w", f=frames)   # GroupNorm over (C/G, F, H, W): frames share stats
        v = v + self.conv4(self.conv3(self.conv2(self.conv1(v))))
        return rearrange(v, "b c f h w -> (b f) c h w")


class TransformerTemporalModel(nn.Module):
    """Attention across the frames at each pixel: GroupNorm -> proj_in -> blocks -> proj_out, plus a residual.

    The blocks are the 2-D UNet's BasicTransformerBlock with no text context: attn2 is a second self-attention
    (diffusers' double_self_attention), no positional embedding. Same maths as diffusers TransformerTemporalModel."""

    def __init__(self, channels, heads, head_size, groups=32):
        super().__init__()
        inner = heads * head_size   # = channels inside the blocks; 8 x 64 = 512 for transformer_in (320 wide)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)   # GroupNorm eps 1e-6 in transformer blocks
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, context_dim=None)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x, frames):
        _, _, h, w = x.shape
        v = self.norm(rearrange(x, "(b f) c h w -> b c f h w", f=frames))
        v = self.proj_in(rearrange(v, "b c f h w -> (b h w) f c"))   # one sequence of F tokens per pixel
        for block in self.transformer_blocks:
            v = block(v, None)                                       # context None: attn2 attends over frames too
        v = self.proj_out(v)
        return x + rearrange(v, "(b h w) f c -> (b f) c h w", h=h, w=w)


class _Temporal:
    """Adds temp_convs (one per resnet) and temp_attentions (one per spatial transformer) to a 2-D block."""

    def add_temporal(self, cfg, channels):
        groups, heads = cfg.norm_num_groups, channels // cfg.head_size
        self.temp_convs = nn.ModuleList([TemporalConvLayer(channels, groups) for _ in self.resnets])
        self.temp_attentions = None if self.attentions is None else nn.ModuleList(
            [TransformerTemporalModel(channels, heads, cfg.head_size, groups) for _ in self.attentions])

    def temporal(self, j, x, context, frames):
        """After resnet j: temp_conv j, then (where there is one) spatial transformer j and temporal transformer j."""
        x = self.temp_convs[j](x, frames)
        if self.attentions is not None and j < len(self.attentions):
            x = self.attentions[j](x, context)
            x = self.temp_attentions[j](x, frames)
        return x


class VideoDownBlock(DownBlock, _Temporal):
    def __init__(self, cfg, i):
        super().__init__(cfg.image_config(), i)
        self.add_temporal(cfg, cfg.block_out_channels[i])

    def layer(self, j, x, temb, context, frames):
        return self.temporal(j, self.resnets[j](x, temb), context, frames)


class VideoMidBlock(MidBlock, _Temporal):
    def __init__(self, cfg):
        super().__init__(cfg.image_config())
        self.add_temporal(cfg, cfg.block_out_channels[-1])

    def forward(self, x, temb, context, frames):
        x = self.temporal(0, self.resnets[0](x, temb), context, frames)   # resnet, temp conv, attention, temp attention
        return self.temporal(1, self.resnets[1](x, temb), context, frames)  # resnet, temp conv


class VideoUpBlock(UpBlock, _Temporal):
    def __init__(self, cfg, i):
        super().__init__(cfg.image_config(), i)
        self.add_temporal(cfg, cfg.block_out_channels[::-1][i])

    def layer(self, j, x, temb, context, frames):
        """FreeU, where planned, acts per frame before this (the 2-D filter on each of the B*F images)."""
        return self.temporal(j, self.resnets[j](x, temb), context, frames)


class VideoUNet(FreeUMixin, ModelDtypeDevice, nn.Module):
    def __init__(self, config: VideoUNetConfig):
        super().__init__()
        self.config = cfg = config
        c0, n = cfg.block_out_channels[0], len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, cfg.time_embed_dim)
        self.transformer_in = TransformerTemporalModel(c0, IN_HEADS, cfg.head_size, cfg.norm_num_groups)
        self.down_blocks = nn.ModuleList([VideoDownBlock(cfg, i) for i in range(n)])
        self.mid_block = VideoMidBlock(cfg)
        self.up_blocks = nn.ModuleList([VideoUpBlock(cfg, i) for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, c0, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)
        self.freeu = None  # FreeU settings (or None); setting them works out freeu_plan (minunet/freeu.py)
        self.deepcache = None  # DeepCache (deepcache.py), set from outside by enable_deepcache

    def decoder_widths(self):
        """Backbone channels entering each decoder resnet, [up block][resnet]: what FreeU's stage rule reads. The
        official video port keys on them as the image port does (1280 -> stage 1, 640 -> stage 2 at full size)."""
        image = self.config.image_config()
        return [[backbone for backbone, _ in UpBlock.widths(image, i)] for i in range(len(self.up_blocks))]

    def forward(self, x, t, context):
        """x (B, in, F, H, W), t scalar or (B,), context (B, T, context_dim) -> raw prediction (B, out, F, H, W)."""
        B, _, frames = x.shape[:3]
        t = torch.as_tensor(t, device=self.device).reshape(-1).expand(B)
        temb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(x.dtype))
        temb = temb.repeat_interleave(frames, dim=0)                 # (B*F, 4 C0), row b * F + f
        context = context.repeat_interleave(frames, dim=0)           # (B*F, T, context_dim)
        h = self.conv_in(rearrange(x, "b c f h w -> (b f) c h w"))
        h = self.transformer_in(h, frames)
        skips = [h]
        top_enc, deep_enc, deep_dec, top_dec = branch_parts(
            len(self.down_blocks), self.config.layers_per_block, None if self.deepcache is None else self.deepcache.branch)
        h = encoder(self.down_blocks, h, skips, top_enc, temb, context, frames)   # shallow part (none without DeepCache)

        def deep(h):  # below DeepCache's branch, as in the image UNet (unet.py)
            h = self.mid_block(encoder(self.down_blocks, h, skips, deep_enc, temb, context, frames), temb, context, frames)
            return decoder(self.up_blocks, h, skips, deep_dec, self.freeu_plan, temb, context, frames)
        # DeepCache (deepcache.py) attaches here: between its full steps `deep` does not run, its last output is reused
        h = deep(h) if self.deepcache is None else self.deepcache(deep, h)
        h = decoder(self.up_blocks, h, skips, top_dec, self.freeu_plan, temb, context, frames)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=frames)


# ---- loading (load_unet dispatches here for ModelScope files; diffusers folders load as the image UNet's) ---------------------------------

def is_video_config(raw):
    """A diffusers config.json of a UNet3DConditionModel (by class name, or by its block types)."""
    blocks = list(raw.get("down_block_types") or []) + list(raw.get("up_block_types") or [])
    return raw.get("_class_name") == "UNet3DConditionModel" or any(str(b).endswith("3D") for b in blocks)


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
    n = count_indices(shapes, r"input_blocks\.(\d+)\.op\.weight") + 1
    n_in = count_indices(shapes, r"input_blocks\.(\d+)\.")
    if n_in % n:
        raise CheckpointError(f"{source}: unsupported video UNet ({n_in} input blocks for {n} levels)")
    L = n_in // n - 1
    first = [1 + i * (L + 1) for i in range(n)]
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
