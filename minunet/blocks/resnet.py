"""Convolutional building blocks shared by the UNet and the VAE.

Names follow diffusers (`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`, ...) so that diffusers
state dicts load strictly with no renaming.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv -> (+ time embedding) -> GroupNorm -> SiLU -> conv, plus a skip.

    Same maths as diffusers ResnetBlock2D with time_embedding_norm="default" and output_scale_factor 1.
    `temb_channels=None` gives the VAE's variant (no time embedding).
    """

    def __init__(self, in_channels, out_channels, temb_channels=None, groups=32, eps=1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1x1 conv only when the channel count changes, as in the checkpoints (`nin_shortcut` / `skip_connection`)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    gradient_checkpointing = False  # recompute in backward instead of storing activations (minunet.models.checkpointing)

    def forward(self, x, temb=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, temb, use_reentrant=False)
        return self._forward(x, temb)

    def _forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. `padding=0` is the VAE's variant: pad right and bottom by one, then no conv padding."""

    def __init__(self, channels, padding=1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # asymmetric padding, as in the original VAE encoder
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling (x2, or to `size` for odd skip shapes) followed by a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        dtype = x.dtype
        if dtype == torch.bfloat16:
            x = x.float()  # nearest upsampling has no bf16 kernel on some torch builds
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x.to(dtype))


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of (N,) values -> (N, dim), laid out [cos, sin] (flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear (diffusers TimestepEmbedding; `time_embed.0/2`, `label_emb.0.0/2` in the original)."""

    def __init__(self, in_channels, dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))
