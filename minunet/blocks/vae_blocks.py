"""The VAE's encoder and decoder (AutoencoderKL of SD 1.x / 2.x / SDXL), with diffusers' module names.

Every GroupNorm in the VAE uses eps 1e-6 (the UNet's resnets use 1e-5).
"""
import torch.nn.functional as F
from torch import nn

from .resnet import Downsample2D, ResnetBlock2D, Upsample2D

EPS = 1e-6


class VAEAttention(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual (diffusers Attention in the VAE mid block)."""

    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # a one-element list so the key reads `to_out.0` as in diffusers (its `to_out.1` is a parameter-free dropout)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        # one head of size C: softmax(q k^T / sqrt(C)) v. The head axis is explicit, (B, 1, H*W, C): given 3-D
        # tensors, torch's CPU SDPA takes the math path, which holds the (H*W)^2 score matrix (2.3 GiB for a
        # 1024 px image's 16384 positions, and 2.4x slower); 4-D tensors take the flash kernel (9 MiB).
        q, k, v = (p(h)[:, None] for p in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]
        h = self.to_out[0](h).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class VAEMidBlock(nn.Module):
    """resnet -> attention -> resnet at the lowest resolution (diffusers UNetMidBlock2D, no time embedding)."""

    def __init__(self, channels, groups):
        super().__init__()
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups=groups, eps=EPS) for _ in range(2)])

    def forward(self, x):
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    """`layers` resnets, then (except in the last block) a stride-2 conv with the VAE's asymmetric padding."""

    def __init__(self, in_channels, out_channels, layers, groups, downsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if j == 0 else out_channels, out_channels,
                                                    groups=groups, eps=EPS) for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)  # (B, C, H, W) -> (B, C, H/2, W/2)
        return x


class UpDecoderBlock2D(nn.Module):
    """`layers` resnets, then (except in the last block) nearest x2 upsampling and a conv."""

    def __init__(self, in_channels, out_channels, layers, groups, upsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if j == 0 else out_channels, out_channels,
                                                    groups=groups, eps=EPS) for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)  # (B, C, H, W) -> (B, C, 2H, 2W)
        return x


class Encoder(nn.Module):
    """(B, in, H, W) image -> (B, 2 * latent, H / f, W / f) Gaussian moments [mean, logvar], f = 2^(levels - 1)."""

    def __init__(self, in_channels, latent_channels, channels, layers, groups):
        super().__init__()
        n = len(channels)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([DownEncoderBlock2D(channels[max(i - 1, 0)], channels[i], layers, groups,
                                                             downsample=i < n - 1) for i in range(n)])
        self.mid_block = VAEMidBlock(channels[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """(B, latent, h, w) -> (B, out, h * f, w * f); up blocks go from the widest level back to the first."""

    def __init__(self, latent_channels, out_channels, channels, layers, groups):
        super().__init__()
        n, rev = len(channels), list(reversed(channels))
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, padding=1)
        self.mid_block = VAEMidBlock(rev[0], groups)
        self.up_blocks = nn.ModuleList([UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], layers + 1, groups,
                                                         upsample=i < n - 1) for i in range(n)])
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=EPS)
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
