"""The UNet's three kinds of stage: down (encoder) levels, the middle, and up (decoder) levels.

Each is `layers` resnets, each optionally followed by a spatial transformer, then a resampler.
Attribute names are diffusers' (`resnets`, `attentions`, `downsamplers.0`, `upsamplers.0`).
Layer j (resnet j, then transformer j where there is one) runs through `Layers.layer`, whose `after` hook the
video UNet's blocks fill with their temporal layers (models/video.py); `frames` is only theirs.
"""
from torch import nn

from .freeu import decoder_input
from .attention import Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D


def _transformers(n, channels, heads, depth, cfg):
    return nn.ModuleList([
        Transformer2DModel(channels, heads, depth, cfg.context_dim, cfg.use_linear_projection,
                           cfg.upcast_attention, cfg.norm_num_groups) for _ in range(n)])


class Layers:
    """Layer j of a block: resnet j, then spatial transformer j where there is one, each followed by `after`."""

    def layer(self, j, x, temb, context, frames=None):
        x = self.after("resnet", j, self.resnets[j](x, temb), frames)
        if self.attentions is not None and j < len(self.attentions):
            x = self.after("attention", j, self.attentions[j](x, context), frames)
        return x

    def after(self, kind, j, x, frames):
        """The per-layer hook: nothing in the 2-D UNet (a video block runs its temporal layer j here)."""
        return x


class DownBlock(Layers, nn.Module):
    """Level `i` of the encoder. Returns the output and the skips it hands to the decoder."""

    def __init__(self, cfg, i):
        super().__init__()
        c_in = cfg.block_out_channels[max(i - 1, 0)]
        c = cfg.block_out_channels[i]
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList([ResnetBlock2D(c_in if j == 0 else c, c, cfg.time_embed_dim,
                                                    cfg.norm_num_groups, cfg.norm_eps) for j in range(n)])
        if cfg.attention_levels[i]:
            self.attentions = _transformers(n, c, cfg.num_heads[i], cfg.transformer_depth[i], cfg)
        else:
            self.attentions = None
        last = i == len(cfg.block_out_channels) - 1
        self.downsamplers = None if last else nn.ModuleList([Downsample2D(c)])

    def forward(self, x, temb, context, frames=None, units=None):
        skips = []  # units: the layers, then the downsampler, (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)); or a range
        for j in range(len(self.resnets) + 1) if units is None else units:
            if j < len(self.resnets) or self.downsamplers is not None:
                x = self.layer(j, x, temb, context, frames) if j < len(self.resnets) else self.downsamplers[0](x)
                skips.append(x)
        return x, skips


class MidBlock(Layers, nn.Module):
    """resnet -> transformer -> resnet at the lowest resolution."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c, c, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)])
        self.attentions = _transformers(1, c, cfg.num_heads[-1], cfg.transformer_depth_mid, cfg)

    def forward(self, x, temb, context, frames=None):
        x = self.layer(0, x, temb, context, frames)      # resnet, transformer
        return self.layer(1, x, temb, context, frames)   # resnet


class UpBlock(Layers, nn.Module):
    """Up block `i` (level n-1-i of the encoder, read backwards): each resnet takes the running features
    concatenated with one skip, popped last-in first-out."""

    def __init__(self, cfg, i):
        super().__init__()
        chans = cfg.block_out_channels[::-1]
        level = len(chans) - 1 - i
        c = chans[i]
        self.resnets = nn.ModuleList([ResnetBlock2D(backbone + skip, c, cfg.time_embed_dim, cfg.norm_num_groups,
                                                    cfg.norm_eps) for backbone, skip in self.widths(cfg, i)])
        n = len(self.resnets)
        if cfg.attention_levels[level]:
            self.attentions = _transformers(n, c, cfg.num_heads[level], cfg.transformer_depth[level], cfg)
        else:
            self.attentions = None
        self.upsamplers = None if i == len(chans) - 1 else nn.ModuleList([Upsample2D(c)])

    @staticmethod
    def widths(cfg, i):
        """(backbone, skip) channels entering each resnet of up block i."""
        chans = cfg.block_out_channels[::-1]
        c, c_prev = chans[i], chans[max(i - 1, 0)]     # c_prev: channels coming up from the block below
        c_skip_last = chans[min(i + 1, len(chans) - 1)]  # the last skip is the level below's (pre-downsample) width
        n = cfg.layers_per_block + 1
        return [(c_prev if j == 0 else c, c_skip_last if j == n - 1 else c) for j in range(n)]

    def forward(self, x, skips, temb, context, freeu=None, frames=None, units=None):
        """freeu: one Stage | None per resnet, or None; units: the layers (each pops a skip), the upsampler; or a range."""
        for j in range(len(self.resnets) + 1) if units is None else units:
            if j < len(self.resnets):  # (B, C + C_skip, H, W): backbone || skip, with FreeU's re-weighting (freeu.py)
                x = decoder_input(x, skips.pop(), None if freeu is None else freeu[j])
                x = self.layer(j, x, temb, context, frames)
            elif self.upsamplers is not None:
                x = self.upsamplers[0](x, skips[-1].shape[2:])  # to the next skip's size (odd sizes)
        return x
