"""The x2 latent upscaler's UNet (stabilityai/sd-x2-latent-upscaler): k-diffusion's upscaler UNet ("K-UNet"), with
diffusers' module names (its UNet2DConditionModel with K* blocks), so the diffusers folder loads strictly.

    x (B, 8, H, W) = noisy latents / sqrt(sigma^2 + 1) ++ low-resolution latents upsampled x2 -> (B, 5, H, W)
    t = log(sigma) / 4 -> Gaussian Fourier features [cos, sin] + cond_proj(timestep_cond) -> MLP = temb (B, 2 C0)
    context (B, 77, 768): CLIP ViT-L's last hidden state, before the final LayerNorm

What differs from the SD UNet (minunet/unet.py), in one place:
- time: random Fourier features of t with a stored frequency vector (`time_proj.weight`, part of the checkpoint)
  instead of fixed sinusoids; `timestep_cond` (noise-level embedding ++ pooled text, 896 wide) is projected and
  added before the MLP; exact GELU after both linears (SD: one SiLU between them); temb is 2 C0 wide (SD: 4 C0).
- resnets: AdaGroupNorm (scale and shift from temb, no affine parameters of its own) replaces GroupNorm + added
  temb; GELU replaces SiLU; groups = channels // 32 (SD: always 32 groups); the shortcut conv has no bias.
- attention: KAttentionBlock = [self-attention] + cross-attention, each on AdaGroupNorm'd features and added back;
  q / k / v with biases; the text goes through a LayerNorm first (`attn2.norm_cross`); no proj_in / proj_out, no
  feed-forward. Self-attention only at the lowest resolution (last down block, first up block).
- resampling: fixed [1, 3, 3, 1] blur kernels with reflect padding, no parameters (SD: strided conv, nearest +
  conv). They ignore odd sizes, so H and W must be multiples of 2^(levels - 1) and at least 2^levels.
- skips: each down block but the last hands on ONE skip (its last output before downsampling), concatenated
  once before the first resnet of the matching up block; the first up block concatenates nothing; `conv_in`'s
  output is no skip; no mid block. Up blocks have layers_per_block resnets (SD: one more); in a block that
  narrows, the last resnet's conv2 (and shortcut) goes to the narrower width and its attention runs at it.
- conv_in and conv_out are 1x1; no norm or activation before conv_out.
Shared with the SD UNet: Attention (minunet/blocks/attention.py) and strict loading (minunet/io.py).

FreeU on this model is minunet's own extension: see KUNet._freeu_plan.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..blocks import ModelDtypeDevice
from ..blocks.attention import Attention
from ..blocks.freeu import FreeUSwitch, decoder_input


@dataclass(frozen=True)
class KUNetConfig:
    in_channels: int = 8                               # noisy latents (4) ++ low-resolution latents upsampled (4)
    out_channels: int = 5                              # the pipeline keeps the first 4
    block_out_channels: tuple = (384, 384, 768, 768)   # level 0 without attention, the others with
    layers_per_block: int = 4                          # resnets per block, down and up
    head_size: int = 64                                # diffusers' `attention_head_dim` (here it is the head size)
    context_dim: int = 768                             # text tokens
    time_cond_dim: int = 896                           # timestep_cond: 64 ones, 64 zeros (noise level 0), pooled text
    group_size: int = 32                               # GroupNorm groups = channels // 32 (fixed in diffusers' K blocks)
    norm_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        c, n = self.block_out_channels, len(self.block_out_channels)
        problems = []
        if n < 2:
            problems.append(f"{n} levels (at least 2)")
        for w in c:
            if w % self.group_size or w % self.head_size:
                problems.append(f"width {w} is not a multiple of the group size {self.group_size} and head size "
                                f"{self.head_size}")
        # diffusers recognises the first up block (self-attention, no concatenation) by in == out == temb width
        # and builds the others to concatenate a skip: only widths with that pattern make the K-UNet
        rev, temb = c[::-1], self.time_embed_dim
        if n >= 2 and not rev[0] == rev[1] == temb:
            problems.append(f"the last two widths must both be 2 x the first ({temb}), found {rev[0]}, {rev[1]}")
        if any(rev[i] == rev[i + 1] == temb for i in range(1, n - 2)):
            problems.append("no other two neighbouring levels may both have the time-embedding width")
        if problems:
            raise ValueError("KUNetConfig: " + "; ".join(problems))

    @property
    def time_embed_dim(self):
        return 2 * self.block_out_channels[0]

    @property
    def downscale(self):
        """How much the lowest level is smaller than the input."""
        return 2 ** (len(self.block_out_channels) - 1)

    def asdict(self):
        return asdict(self)


SD_X2_LATENT_UPSCALER = KUNetConfig()  # stabilityai/sd-x2-latent-upscaler


# ---- blocks ---------------------------------------------------------------------------------------------------
class GaussianFourierProjection(nn.Module):
    """t (N,) -> [cos(2 pi t w), sin(2 pi t w)] (N, 2 n) with a stored random frequency vector w (n,)."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n), requires_grad=False)  # part of the checkpoint, never trained

    def forward(self, t):
        x = t[:, None] * self.weight[None] * 2 * math.pi   # in t's dtype (float64 for a Python float, as diffusers)
        return torch.cat([torch.cos(x), torch.sin(x)], dim=-1)


class TimeEmbedding(nn.Module):
    """features + cond_proj(timestep_cond) -> Linear -> GELU -> Linear -> GELU (diffusers TimestepEmbedding with
    cond_proj_dim and post_act_fn="gelu")."""

    def __init__(self, dim, cond_dim):
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, dim, bias=False)
        self.linear_1 = nn.Linear(dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, features, cond):
        x = features + self.cond_proj(cond)
        return F.gelu(self.linear_2(F.gelu(self.linear_1(x))))  # exact (erf) GELUs


class AdaGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then x * (1 + scale) + shift with (scale, shift) = Linear(temb)."""

    def __init__(self, temb_dim, channels, groups, eps=1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.linear = nn.Linear(temb_dim, 2 * channels)

    def forward(self, x, temb):
        scale, shift = self.linear(temb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return F.group_norm(x, self.groups, eps=self.eps) * (1 + scale) + shift


class KResnet(nn.Module):
    """AdaGN -> GELU -> conv1 (c_in -> c_mid) -> AdaGN -> GELU -> conv2 (c_mid -> c_out), plus a shortcut.
    Same maths as diffusers ResnetBlockCondNorm2D with time_embedding_norm="ada_group"."""

    def __init__(self, c_in, c_mid, c_out, cfg):
        super().__init__()
        g, temb = cfg.group_size, cfg.time_embed_dim
        self.norm1 = AdaGroupNorm(temb, c_in, c_in // g, cfg.norm_eps)
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.norm2 = AdaGroupNorm(temb, c_mid, c_mid // g, cfg.norm_eps)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x, temb):
        h = self.conv1(F.gelu(self.norm1(x, temb)))
        h = self.conv2(F.gelu(self.norm2(h, temb)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class NormedCrossAttention(Attention):
    """Cross-attention whose text states go through their own LayerNorm first (diffusers' cross_attention_norm
    "layer_norm": `attn2.norm_cross`); q / k / v with biases."""

    def __init__(self, dim, heads, context_dim):
        super().__init__(dim, heads, context_dim, bias=True)
        self.norm_cross = nn.LayerNorm(context_dim)  # LayerNorm eps 1e-5

    def forward(self, x, context=None):
        return super().forward(x, self.norm_cross(context))


class KAttentionBlock(nn.Module):
    """x += attn1(AdaGN(x)) [lowest resolution only]; x += attn2(AdaGN(x), LayerNorm(context)); no feed-forward."""

    def __init__(self, dim, cfg, self_attention):
        super().__init__()
        groups, heads = max(1, dim // cfg.group_size), dim // cfg.head_size
        temb = cfg.time_embed_dim
        self.norm1 = AdaGroupNorm(temb, dim, groups) if self_attention else None
        self.attn1 = Attention(dim, heads, bias=True) if self_attention else None
        self.norm2 = AdaGroupNorm(temb, dim, groups)
        self.attn2 = NormedCrossAttention(dim, heads, cfg.context_dim)

    def forward(self, x, temb, context):
        h, w = x.shape[2:]

        def tokens(y):
            return rearrange(y, "b c h w -> b (h w) c")

        if self.attn1 is not None:
            x = x + rearrange(self.attn1(tokens(self.norm1(x, temb))), "b (h w) c -> b c h w", h=h, w=w)
        out = self.attn2(tokens(self.norm2(x, temb)), context)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


def _blur_kernel(x, gain):
    """The depthwise (C, 1, 4, 4) kernel k^T k, k = [1, 3, 3, 1] / 8 * gain, in x's dtype and device."""
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device) / 8 * gain
    return (k[:, None] * k[None]).expand(x.shape[1], 1, 4, 4)


class KDownsample2D(nn.Module):
    """Reflect-pad 1, blur with [1, 3, 3, 1] / 8 per axis, stride 2: (B, C, H, W) -> (B, C, H/2, W/2). No weights."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), _blur_kernel(x, 1), stride=2, groups=x.shape[1])


class KUpsample2D(nn.Module):
    """Reflect-pad 1, transposed blur (kernel x 2 per axis), stride 2: (B, C, H, W) -> (B, C, 2H, 2W). No weights."""

    def forward(self, x):
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv_transpose2d(x, _blur_kernel(x, 2), stride=2, padding=3, groups=x.shape[1])


class KDownBlock(nn.Module):
    """Down block i: resnets (+ cross-attention from level 1 on), then downsampling except at the last level.
    Returns the output and the one skip it hands on (None from the last block)."""

    def __init__(self, cfg, i):
        super().__init__()
        c = cfg.block_out_channels
        n, last = cfg.layers_per_block, i == len(c) - 1
        c_in = c[max(i - 1, 0)]
        self.resnets = nn.ModuleList([KResnet(c_in if j == 0 else c[i], c[i], c[i], cfg) for j in range(n)])
        self.attentions = None if i == 0 else nn.ModuleList(
            [KAttentionBlock(c[i], cfg, self_attention=last) for _ in range(n)])
        self.downsamplers = None if last else nn.ModuleList([KDownsample2D()])

    def forward(self, x, temb, context):
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, temb, context)
        if self.downsamplers is None:
            return x, None
        return self.downsamplers[0](x), x  # the skip is taken before downsampling


class KUpBlock(nn.Module):
    """Up block i (level n-1-i read backwards): [backbone || skip] once, then resnets (+ attention but at level 0),
    the last going to the next level's width, then upsampling except in the last block."""

    def __init__(self, cfg, i):
        super().__init__()
        rev = cfg.block_out_channels[::-1]
        n, last = cfg.layers_per_block, i == len(rev) - 1
        c, c_next = rev[i], rev[min(i + 1, len(rev) - 1)]
        c_first = c if i == 0 else 2 * c   # the first up block concatenates nothing
        self.index = i
        self.resnets = nn.ModuleList([
            KResnet(c_first if j == 0 else c, c, c_next if j == n - 1 else c, cfg) for j in range(n)])
        self.attentions = None if last else nn.ModuleList(
            [KAttentionBlock(c_next if j == n - 1 else c, cfg, self_attention=i == 0) for j in range(n)])
        self.upsamplers = None if last else nn.ModuleList([KUpsample2D()])

    def forward(self, x, skip, temb, context, freeu=None):
        """freeu: the blocks.freeu.Stage applied at this block's concatenation, or None."""
        if skip is not None:
            # (B, 2C, H, W): backbone || the matching down block's last output, re-weighted where FreeU says
            x = decoder_input(x, skip, freeu)
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, temb, context)
        return x if self.upsamplers is None else self.upsamplers[0](x)


# ---- the model -------------------------------------------------------------------------------------------------
class KUNet(FreeUSwitch, ModelDtypeDevice, nn.Module):
    def __init__(self, config: KUNetConfig = SD_X2_LATENT_UPSCALER):
        super().__init__()
        self.config = cfg = config
        c0, n = cfg.block_out_channels[0], len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 1)
        self.time_proj = GaussianFourierProjection(cfg.time_embed_dim // 2)
        self.time_embedding = TimeEmbedding(cfg.time_embed_dim, cfg.time_cond_dim)
        self.down_blocks = nn.ModuleList([KDownBlock(cfg, i) for i in range(n)])
        self.up_blocks = nn.ModuleList([KUpBlock(cfg, i) for i in range(n)])
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 1)

    def check_size(self, height, width):
        """The fixed kernels halve and double exactly only for sizes that divide by 2^(levels - 1), and reflect
        padding needs 2 pixels at the lowest level."""
        f = self.config.downscale
        if height % f or width % f or height < 2 * f or width < 2 * f:
            raise ValueError(f"K-UNet input {height}x{width} (height x width): its fixed [1, 3, 3, 1] down/up-sampling "
                             f"kernels need latent height and width that are multiples of {f} and at least {2 * f}")

    def time_embed(self, t, batch, dtype, timestep_cond):
        """t (scalar or (B,)) and timestep_cond (B, time_cond_dim) -> temb (B, 2 C0)."""
        t = torch.as_tensor(t, dtype=torch.float64 if isinstance(t, float) else None, device=self.device).reshape(-1)
        if t.numel() not in (1, batch):
            raise ValueError(f"t has {t.numel()} values for a batch of {batch}: pass a scalar or one per sample")
        if timestep_cond.shape != (batch, self.config.time_cond_dim):
            raise ValueError(f"timestep_cond has shape {tuple(timestep_cond.shape)}, expected "
                             f"({batch}, {self.config.time_cond_dim})")
        features = self.time_proj(t.expand(batch)).to(dtype)
        return self.time_embedding(features, timestep_cond.to(dtype))

    def forward(self, x, t, context, *, timestep_cond):
        """x (B, in, H, W), t = log(sigma) / 4 (scalar or (B,)), context (B, T, context_dim), timestep_cond
        (B, time_cond_dim) -> raw output (B, out, H, W)."""
        self.check_size(*x.shape[2:])
        temb = self.time_embed(t, x.shape[0], x.dtype, timestep_cond)
        h = self.conv_in(x)
        skips = []
        for block in self.down_blocks:
            h, skip = block(h, temb, context)
            skips.append(skip)
        plan = self.freeu_plan or [None] * len(self.up_blocks)
        for block, skip, stage in zip(self.up_blocks, reversed(skips), plan):  # up i takes down n-1-i's skip
            h = block(h, skip, temb, context, freeu=stage)
        return self.conv_out(h)

    def _freeu_plan(self, freeu):
        """FreeU on the K-UNet, minunet's own definition: one Stage | None per up block, at its one concatenation.

        No public rule fits this decoder: by width (4 x / 2 x the model channels) nothing is at 4 x C0, and by
        up-block index (diffusers' rule) up block 0 has no concatenation, so b1 / s1 would touch nothing. diffusers'
        own enable_freeu on this model changes nothing at all (its K up blocks never read the factors). Following
        the paper's idea, the first two decoder stages where the backbone meets the skips: stage 1 (b1, s1) at up
        block 1's concatenation (quarter resolution, 2C0 + 2C0 channels), stage 2 (b2, s2) at up block 2's (half
        resolution, C0 + C0), the full-resolution block untouched. mapping="official" (the default) means this
        rule here; mapping="diffusers" is an error rather than a silent no-op."""
        if freeu.mapping == "diffusers":
            raise ValueError("FreeU mapping='diffusers' on the latent upscaler's K-UNet: diffusers' enable_freeu "
                             "does nothing on this model (its K up blocks never read the factors), so there is no "
                             "diffusers behaviour to reproduce. Use mapping='official' for minunet's K-UNet FreeU "
                             "(stage 1 at up block 1's concatenation, stage 2 at up block 2's).")
        return [freeu.at({1: 1, 2: 2}.get(i)) for i in range(len(self.up_blocks))]
