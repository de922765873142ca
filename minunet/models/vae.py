"""The Stable Diffusion VAE (AutoencoderKL): encode images to a diagonal Gaussian over latents, decode latents.

`decode` takes raw latents, i.e. what the diffusion model works on divided by `scaling_factor` (plus
`shift_factor` where a VAE has one), and returns images in about [-1, 1], not clamped -- as diffusers'
AutoencoderKL.decode. minunet.loading.vae.load_vae reads every official layout.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..blocks.vae_blocks import Decoder, Encoder
from .. import checks
from ..noise import randn


@dataclass(frozen=True)
class VAEConfig:
    """AutoencoderKL hyper-parameters, diffusers' field names. Defaults are the SD 1.x / 2.x VAE."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (128, 256, 512, 512)  # one level per entry; all but the last halve the resolution
    layers_per_block: int = 2  # resnets per encoder level; decoder levels have one more
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512  # image size it was trained at; the default tile size of tiled encode / decode
    scaling_factor: float = 0.18215  # diffusion latents = (vae latents - shift_factor) * scaling_factor
    shift_factor: float | None = None
    force_upcast: bool = True  # run a float16 VAE in float32 (diffusers' default, needed by the SDXL VAE)
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self):
        """Types and ranges: positive widths and channels, groups dividing every width, a finite positive
        scaling factor (0 or NaN would make every image black)."""
        if not isinstance(self.block_out_channels, (list, tuple)):
            raise TypeError(f"VAEConfig: block_out_channels must be a list, got {self.block_out_channels!r}")
        object.__setattr__(self, "block_out_channels", checks.int_tuple("VAEConfig: block_out_channels",
                                                                       self.block_out_channels, 1))
        for f in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
                  "sample_size"):
            checks.integer(f"VAEConfig: {f}", getattr(self, f), 1)
        for c in self.block_out_channels:
            checks.divisible("VAEConfig: block_out_channels entry", c, self.norm_num_groups, "norm_num_groups")
        checks.number("VAEConfig: scaling_factor", self.scaling_factor, 0, low_open=True)
        if self.shift_factor is not None:
            checks.number("VAEConfig: shift_factor", self.shift_factor)
        for f in ("force_upcast", "use_quant_conv", "use_post_quant_conv"):
            checks.flag(f"VAEConfig: {f}", getattr(self, f))

    @property
    def downscale(self):  # image pixels per latent pixel
        return 2 ** (len(self.block_out_channels) - 1)


# force_upcast is True in both, as diffusers reads the official configs (SD 1.5's has no such field: default True).
# The SD VAE runs fine in float16: replace(SD, force_upcast=False) for speed, the overflow check in decode stays.
SD = VAEConfig()  # SD 1.x / 2.x (and sd-vae-ft-mse / ft-ema)
SDXL = VAEConfig(sample_size=1024, scaling_factor=0.13025)  # its activations overflow float16


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from (B, 2L, h, w) moments; diffusers' DiagonalGaussianDistribution."""

    def __init__(self, moments):
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator=None):
        """mean + std * eps, eps drawn as diffusers' randn_tensor does (minunet.noise.randn): on the generator's
        device, in the moments' dtype, one draw per sample when given a list of generators."""
        return self.mean + self.std * randn(self.mean.shape, generator, self.moments.device, self.moments.dtype)

    def mode(self):
        return self.mean


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        c = self.config = config
        self.encoder = Encoder(c.in_channels, c.latent_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups)
        self.decoder = Decoder(c.latent_channels, c.out_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups)
        two_l = 2 * c.latent_channels
        self.quant_conv = nn.Conv2d(two_l, two_l, 1) if c.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None

    @property
    def scaling_factor(self):
        return self.config.scaling_factor

    @property
    def shift_factor(self):
        return self.config.shift_factor

    @property
    def dtype(self):
        return self.decoder.conv_in.weight.dtype

    def encode(self, x, *, tiled=False, tile_size=None, overlap=0.25) -> DiagonalGaussian:
        """(B, 3, H, W) images in [-1, 1] -> Gaussian over (B, L, H/f, W/f) latents (not yet scaled).
        `tiled=True`: encode `tile_size`-pixel tiles (default config.sample_size) overlapping by the fraction
        `overlap` and blend them, as diffusers' tiled encode; used only when the image is larger than one tile."""
        tile = tile_size if tile_size is not None else self.config.sample_size
        with self._compute_dtype() as dtype:
            x = x.to(dtype)
            if tiled and max(x.shape[-2:]) > tile:
                moments = tiled_apply(self._encode_tile, x, tile, tile // self.config.downscale, overlap)
            else:
                moments = self._encode_tile(x)
        return DiagonalGaussian(moments)

    def decode(self, z, *, tiled=False, tile_size=None, overlap=0.25):
        """(B, L, h, w) raw latents -> (B, 3, h*f, w*f) images, about [-1, 1], not clamped. `tile_size` is in image
        pixels (default config.sample_size); tiling is used only when the latents are larger than one tile."""
        tile = tile_size if tile_size is not None else self.config.sample_size
        with self._compute_dtype() as dtype:
            image = self._decode(z.to(dtype), tiled, tile, overlap)
        if image.dtype == torch.float16 and not torch.isfinite(image).all():
            # A float16 VAE without force_upcast that overflowed anyway: decode again in float32.
            with self._compute_dtype(force=True):
                image = self._decode(z.float(), tiled, tile, overlap)
        return image

    def _decode(self, z, tiled, tile, overlap):
        tile_latent = tile // self.config.downscale
        if tiled and max(z.shape[-2:]) > tile_latent:
            return tiled_apply(self._decode_tile, z, tile_latent, tile, overlap)
        return self._decode_tile(z)

    def _encode_tile(self, x):
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode_tile(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    @contextmanager
    def _compute_dtype(self, force=False):
        """Yield the dtype to compute in. A float16 VAE with force_upcast (the SDXL VAE's activations pass 65504)
        runs in float32 inside the block and returns float32; fp16 -> fp32 -> fp16 is exact, so its weights come
        back unchanged afterwards."""
        dtype = self.dtype
        if dtype != torch.float16 or not (force or self.config.force_upcast):
            yield dtype
            return
        self.float()
        try:
            yield torch.float32
        finally:
            self.to(dtype)


def tiled_apply(fn, x, tile_in, tile_out, overlap):
    """fn over overlapping tiles of x (B, C, H, W) -> blended result. Same grid and blending as diffusers' tiled
    encode / decode: tiles of `tile_in` start every int(tile_in * (1 - overlap)); each output tile is cross-faded
    over int(tile_out * overlap) rows / columns with the tile above and the tile to the left (in place, in this
    order), then cropped to its top-left tile_out - blend pixels. Only two rows of tiles are held at a time."""
    stride, blend = int(tile_in * (1 - overlap)), int(tile_out * overlap)
    if not (0 <= overlap < 1 and stride > 0):
        raise ValueError(f"tiling needs 0 <= overlap < 1 and a tile of several latent pixels, got tile {tile_in} "
                         f"(input pixels), overlap {overlap}")
    keep = tile_out - blend
    H, W = x.shape[-2:]
    out_rows, above = [], None
    for i in range(0, H, stride):
        row = [fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in range(0, W, stride)]
        for j, tile in enumerate(row):
            if above is not None:
                _cross_fade(above[j], tile, blend, dim=2)
            if j > 0:
                _cross_fade(row[j - 1], tile, blend, dim=3)
        out_rows.append(torch.cat([t[:, :, :keep, :keep] for t in row], dim=3))
        above = row
    return torch.cat(out_rows, dim=2)


def _cross_fade(a, b, extent, dim):
    """In place: b's first `extent` rows (dim 2) / columns (dim 3) = a's last ones * (1 - k/extent) + b's * k/extent."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return
    k = (torch.arange(extent, dtype=torch.float64) / extent).view([-1 if d == dim else 1 for d in range(4)])
    head = b.narrow(dim, 0, extent)
    tail = a.narrow(dim, a.shape[dim] - extent, extent)
    head.copy_(tail * (1 - k).to(a.device, a.dtype) + head * k.to(b.device, b.dtype))
