"""The UNet's three kinds of stage: down (encoder) levels, the middle, and up (decoder) levels.

Each is `layers` resnets, each optionally followed by a spatial transformer, then a resampler.
Attribute names are diffusers' (`resnets`, `attentions`, `downsamplers.0`, `upsamplers.0`).
"""
from torch import nn

from ..freeu import decoder_input
from .attention import Transformer2DModel
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D


def _transformers(n, channels, heads, depth, cfg):
    return nn.ModuleList([
        Transformer2DModel(channels, heads, depth, cfg.context_dim, cfg.use_linear_projection,
                           cfg.upcast_attention, cfg.norm_num_groups) for _ in range(n)])


class _Level(nn.Module):
    def layer(self, j, x, temb, context):
        """Layer j: resnet j, then transformer j where the level has them."""
        x = self.resnets[j](x, temb)
        return x if self.attentions is None else self.attentions[j](x, context)


class DownBlock(_Level):
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

    def forward(self, x, temb, context, *extra, units=None):
        """units: which of the level's units run, its layers (resnet [+ transformer]) then the downsampler, as a
        range (DeepCache runs a level in two parts); all by default. -> (x, the skips they made)."""
        skips = []
        for j in range(len(self.resnets) + 1) if units is None else units:
            if j < len(self.resnets):
                x = self.layer(j, x, temb, context, *extra)
                skips.append(x)
            elif self.downsamplers is not None:
                x = self.downsamplers[0](x)  # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
                skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet -> transformer -> resnet at the lowest resolution."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c, c, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps) for _ in range(2)])
        self.attentions = _transformers(1, c, cfg.num_heads[-1], cfg.transformer_depth_mid, cfg)

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(_Level):
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

    def forward(self, x, skips, temb, context, *extra, freeu=None, units=None):
        """skips: the UNet's list, each resnet pops its skip off the end. freeu: None, or one
        minunet.freeu.Stage | None per resnet (the UNet's freeu_plan for this block). units: which of the block's
        units run, its layers then the upsampler, as a range; all by default."""
        n = len(self.resnets)
        for j in range(n + 1) if units is None else units:
            if j < n:
                # (B, C + C_skip, H, W): backbone || skip, with FreeU's re-weighting where the plan says (freeu.py)
                x = decoder_input(x, skips.pop(), None if freeu is None else freeu[j])
                x = self.layer(j, x, temb, context, *extra)
            elif self.upsamplers is not None:
                x = self.upsamplers[0](x, skips[-1].shape[2:])  # to the next skip's size (odd sizes)
        return x


# ---- the paths through a UNet's levels (image and video UNets) ---------------------------------------------------
# The encoder is a sequence of units, layers_per_block + 1 per level (its layers, then the downsampler), the decoder
# one of layers_per_block + 2 per up block (its layers, then the upsampler); a unit a level lacks does nothing.

def encoder(blocks, h, skips, units, *args):
    """Run the encoder units in the range `units`, appending their skips to `skips`; -> h."""
    per = len(blocks[0].resnets) + 1
    for i, block in enumerate(blocks):
        part = range(max(units.start - i * per, 0), min(units.stop - i * per, per))
        if len(part):
            h, s = block(h, *args, units=part)
            skips += s
    return h


def decoder(blocks, h, skips, units, freeu_plan, *args):
    """Run the decoder units in the range `units`, popping their skips off `skips`; -> h."""
    per = len(blocks[0].resnets) + 1
    for i, block in enumerate(blocks):
        part = range(max(units.start - i * per, 0), min(units.stop - i * per, per))
        if len(part):
            h = block(h, skips, *args, freeu=None if freeu_plan is None else freeu_plan[i], units=part)
    return h


def branch_parts(levels, layers, branch):
    """The unit ranges (shallow encoder, deep encoder, deep decoder, shallow decoder) of a UNet with `levels`
    levels of `layers` layers split at DeepCache's branch (level, unit) (deepcache.py): the shallow encoder is
    the units before it, the shallow decoder the units from its mirror on. branch None: all of it deep."""
    n_enc, n_dec = levels * (layers + 1), levels * (layers + 2)
    if branch is None:
        return range(0), range(n_enc), range(n_dec), range(n_dec, n_dec)
    level, unit = branch
    enc, dec = level * (layers + 1) + unit, (levels - 1 - level) * (layers + 2) + layers - unit
    return range(enc), range(enc, n_enc), range(dec), range(dec, n_dec)
