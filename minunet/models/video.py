"""The text-to-video UNet of ModelScope text-to-video-ms-1.7b and zeroscope (diffusers' UNet3DConditionModel).

It is the image UNet (minunet.models.unet) with frames folded into the batch, plus three temporal modules; everything
spatial is the 2-D UNet's own blocks (ResnetBlock2D, Transformer2DModel, Down/Upsample2D, the time embedding),
built by the 2-D block classes from `VideoUNetConfig.image_config()`, run by the image UNet's own loops
(models/unet.py encode / decode). What the video model adds, all of it here, fills the 2-D blocks' per-layer hook:

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

from ..blocks import ModelDtypeDevice
from ..blocks.attention import BasicTransformerBlock
from ..blocks.resnet import TimestepEmbedding, timestep_embedding
from ..blocks.freeu import FreeUSwitch
from ..blocks.unet_blocks import DownBlock, MidBlock, UpBlock
from .config import UNetConfig
from .unet import decode, decoder_widths, encode

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

    def asdict(self):
        return asdict(self)


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
    """What a video block adds to its 2-D block: temp_convs (one per resnet) and temp_attentions (one per spatial
    transformer), run by the 2-D block's per-layer hook: resnet -> temp_conv [-> transformer -> temp_attention]."""

    def add_temporal(self, cfg, channels):
        groups, heads = cfg.norm_num_groups, channels // cfg.head_size
        self.temp_convs = nn.ModuleList([TemporalConvLayer(channels, groups) for _ in self.resnets])
        self.temp_attentions = None if self.attentions is None else nn.ModuleList(
            [TransformerTemporalModel(channels, heads, cfg.head_size, groups) for _ in self.attentions])

    def after(self, kind, j, x, frames):
        """After resnet j its temporal conv, after spatial transformer j its temporal transformer; (B*F, C, H, W)."""
        return (self.temp_convs if kind == "resnet" else self.temp_attentions)[j](x, frames)


class VideoDownBlock(_Temporal, DownBlock):
    def __init__(self, cfg, i):
        super().__init__(cfg.image_config(), i)
        self.add_temporal(cfg, cfg.block_out_channels[i])


class VideoMidBlock(_Temporal, MidBlock):
    def __init__(self, cfg):
        super().__init__(cfg.image_config())
        self.add_temporal(cfg, cfg.block_out_channels[-1])


class VideoUpBlock(_Temporal, UpBlock):
    """FreeU acts per frame here: the 2-D filter on each of the B*F images."""

    def __init__(self, cfg, i):
        super().__init__(cfg.image_config(), i)
        self.add_temporal(cfg, cfg.block_out_channels[::-1][i])


class VideoUNet(FreeUSwitch, ModelDtypeDevice, nn.Module):
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
        self.deepcache = None  # DeepCache (deepcache.py), set from outside by enable_deepcache

    def decoder_widths(self):
        """The image UNet's: the official video port keys FreeU on them as the image port does (1280 -> stage 1,
        640 -> stage 2 at full size)."""
        return decoder_widths(self.config.image_config())

    def forward(self, x, t, context):
        """x (B, in, F, H, W), t scalar or (B,), context (B, T, context_dim) -> raw prediction (B, out, F, H, W)."""
        B, _, frames = x.shape[:3]
        t = torch.as_tensor(t, device=self.device).reshape(-1).expand(B)
        temb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(x.dtype))
        temb = temb.repeat_interleave(frames, dim=0)                 # (B*F, 4 C0), row b * F + f
        context = context.repeat_interleave(frames, dim=0)           # (B*F, T, context_dim)
        skips = [self.transformer_in(self.conv_in(rearrange(x, "b c f h w -> (b f) c h w")), frames)]
        enc, dec = (0, float("inf")) if self.deepcache is None else self.deepcache.cut  # as in the image UNet
        h = encode(self.down_blocks, skips, 0, enc, temb, context, frames)
        if self.deepcache is None or self.deepcache.full_step(h):
            h = encode(self.down_blocks, skips, enc, float("inf"), temb, context, frames, h)
            h = self.mid_block(h, temb, context, frames)
            h = decode(self.up_blocks, h, skips, 0, dec, temb, context, self.freeu_plan, frames)
        h = h if self.deepcache is None else self.deepcache.kept(h)  # DeepCache (deepcache.py): kept, reused between
        h = decode(self.up_blocks, h, skips, dec, float("inf"), temb, context, self.freeu_plan, frames)
        h = self.conv_out(F.silu(self.conv_norm_out(h)))
        return rearrange(h, "(b f) c h w -> b c f h w", f=frames)
