"""The Stable Diffusion VAE (AutoencoderKL): encode images to a diagonal Gaussian over latents, decode latents.

`decode` takes raw latents, i.e. what the diffusion model works on divided by `scaling_factor` (plus
`shift_factor` where a VAE has one), and returns images in about [-1, 1], not clamped -- as diffusers'
AutoencoderKL.decode. `load_vae` reads every official layout (see its docstring).
"""
import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .blocks.vae_blocks import Decoder, Encoder
from . import checks
from .io import CheckpointError, hub_download, load_into, load_safetensors, looks_like_repo_id, read_json, refuse_pickle
from .keymaps import vae as keymap
from .noise import randn
from .precision import resolve_dtype


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

    def to_diffusers(self):
        """The matching diffusers AutoencoderKL config dict."""
        d = dataclasses.asdict(self)
        n = len(self.block_out_channels)
        return {**d, "block_out_channels": list(self.block_out_channels), "act_fn": "silu",
                "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}

    @classmethod
    def from_diffusers(cls, d, source="VAE config.json"):
        """Translate an AutoencoderKL `config.json` dict; raise a CheckpointError naming the file and the field
        for anything this VAE does not implement and for wrong types or ranges."""
        try:
            return cls._from_diffusers(d, source)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: VAE config not supported: {e}") from None

    @classmethod
    def _from_diffusers(cls, d, source):
        d = {**DIFFUSERS_DEFAULTS, **d}
        checks.int_tuple("block_out_channels", d["block_out_channels"], 1)
        unknown = set(d) - set(DIFFUSERS_DEFAULTS) - METADATA
        n = len(d["block_out_channels"])
        problems = [f"unknown fields {sorted(unknown)}"] if unknown else []
        for field, want in UNSUPPORTED_UNLESS.items():
            if d[field] != want:
                problems.append(f"{field}={d[field]!r} (only {want!r} is implemented)")
        for field, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if list(d[field]) != [kind] * n:
                problems.append(f"{field}={d[field]!r} (expected {n} x '{kind}', one per block_out_channels)")
        if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            problems.append(f"_class_name={d['_class_name']!r} (expected 'AutoencoderKL')")
        size = d["sample_size"]
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                problems.append(f"sample_size={size!r} (only square sizes are implemented)")
            size = size[0]
        if problems:
            raise CheckpointError(f"{source}: VAE config not supported: " + "; ".join(problems))
        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        return cls(**{**kw, "block_out_channels": tuple(d["block_out_channels"]), "sample_size": size})


# What diffusers' AutoencoderKL assumes for a field its config.json leaves out (e.g. SD 1.5 has no scaling_factor).
DIFFUSERS_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,), layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
    sample_size=32, scaling_factor=0.18215, shift_factor=None, latents_mean=None, latents_std=None,
    force_upcast=True, use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)
METADATA = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
UNSUPPORTED_UNLESS = dict(act_fn="silu", latents_mean=None, latents_std=None, mid_block_add_attention=True)

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


# ---------------------------------------------------------------------------------------------------------------
# Loading

WEIGHT_NAMES = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"]


def load_vae(source, *, config=None, dtype=None, device=None) -> VAE:
    """A VAE from any official layout, loaded strictly:
    - a diffusers folder (the VAE folder itself, or a pipeline folder with `vae/`), new or old attention names;
    - a whole original checkpoint (`first_stage_model.*`; the UNet, text encoders, EMA and schedule keys are skipped);
    - a standalone original VAE file with no prefix (e.g. vae-ft-mse-840000-ema-pruned.safetensors);
    - a diffusers-layout .safetensors file (config.json next to it is used if present);
    - a Hub repo id (config.json and weights from `vae/`, else from the root).
    Configuration: `config` if given, else config.json, else read off the tensor shapes, with the SDXL preset's
    scaling factor when a whole checkpoint has SDXL text encoders (`conditioner.*`) or the SDXL UNet
    (`label_emb`), and the SD preset's otherwise. A standalone file has no such keys: an official one is
    recognised by size + SHA-256, any other gets SD's with a warning (pass config=VAE_SDXL for an SDXL VAE)."""
    dtype = resolve_dtype(dtype, device)  # "auto": minunet.precision
    weights, cfg_json = _locate(source)
    if config is None and cfg_json is not None:
        config = VAEConfig.from_diffusers(read_json(cfg_json, "VAE config"), source=cfg_json)
    sd = load_safetensors(weights)
    base = None
    if config is None and not any(k.startswith(keymap.PREFIX) for k in sd):  # standalone: shapes cannot tell
        base = standalone_preset(weights)
    return vae_from_state_dict(sd, config=config, source=weights, dtype=dtype, device=device, base=base)


def standalone_preset(path):
    """SD or SDXL preset for a VAE file without config.json: an official file is recognised by size + SHA-256
    (minunet.weights LFS_POINTERS.tsv); any other gets SD's, with a warning that says how to pass SDXL's."""
    from .inspect import official_files, sha256

    known = [p for p, _ in official_files().get(Path(path).stat().st_size, []) if p.endswith(".safetensors")]
    if known:
        digest = sha256(path, progress=False)
        match = next((p for p, h in official_files()[Path(path).stat().st_size] if h == digest), None)
        if match is not None and "vae" in match:
            return SDXL if match.startswith(("stable-diffusion-xl", "sdxl")) else SD
    warnings.warn(f"{path}: a VAE file without config.json that is not a known official file: assuming the SD 1.x / "
                  f"2.x VAE's scaling_factor {SD.scaling_factor}. For an SDXL VAE pass config=minunet.VAE_SDXL "
                  f"(scaling_factor {SDXL.scaling_factor}), or config=dataclasses.replace(minunet.VAE_SD, "
                  "scaling_factor=...) for another.", stacklevel=3)
    return SD


def vae_from_state_dict(sd, *, config=None, source="state dict", dtype=None, device=None, base=None) -> VAE:
    """A VAE from a state dict in any layout load_vae reads (tensors may be on the meta device, for checks).
    `base` (a VAEConfig) gives the fields shapes cannot tell, instead of what the keys suggest."""
    sd, layout, detected = to_diffusers_layout(sd, source)
    base = base if base is not None else detected
    if config is None:
        config = config_from_shapes(sd, base, source)
    if layout == "original":
        sd = keymap.original_to_diffusers(sd, len(config.block_out_channels), config.layers_per_block, source)
    with torch.device("meta"):
        model = VAE(config)
    return load_into(model, sd, source, dtype=dtype, device=device).eval()


def _locate(source):
    """-> (weights file, config.json or None)."""
    if looks_like_repo_id(source):
        return _from_hub(str(source))
    path = Path(source)
    refuse_pickle(path)
    if path.is_dir():
        for folder in (path / "vae", path):
            weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
            if weights is not None:
                cfg = folder / "config.json"
                return weights, cfg if cfg.is_file() else None
        raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_NAMES)} in it or in {path / 'vae'} "
                              "(a .bin folder must be converted to safetensors first)")
    cfg = path.parent / "config.json"
    return path, cfg if path.name in WEIGHT_NAMES and cfg.is_file() else None


def _from_hub(repo_id):
    last = None
    for sub in ("vae", None):  # a pipeline repo keeps its VAE in vae/, a VAE-only repo at its root
        try:
            cfg = hub_download(repo_id, ["config.json"], subfolder=sub)
            return hub_download(repo_id, WEIGHT_NAMES, subfolder=sub), cfg
        except CheckpointError as e:
            last = e
    raise CheckpointError(f"{last}. load_vae also reads local files: download the VAE (config.json and "
                          "diffusion_pytorch_model.safetensors, or a single .safetensors) and pass its local path.")


def to_diffusers_layout(sd, source):
    """Detect the layout of a raw state dict -> (state dict, "original" | "diffusers", preset for non-shape fields).
    Whole checkpoints lose their prefix and non-VAE keys; diffusers' old attention names are renamed."""
    keys = list(sd)
    if any(k.startswith(keymap.PREFIX) for k in keys):
        # SDXL: its text encoders (`conditioner.*`) or its UNet's micro-conditioning embedding (`label_emb`)
        xl = any(k.startswith(("conditioner.", "model.diffusion_model.label_emb.")) for k in keys)
        base = SDXL if xl else SD
        return keymap.split_whole_checkpoint(sd, source), "original", base
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return sd, "original", SD
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return keymap.rename_legacy_attention(sd), "diffusers", SD
    what = "a UNet / text-encoder checkpoint without a VAE" if any(
        k.startswith(("model.diffusion_model.", "conditioner.", "cond_stage_model.")) for k in keys) else "not a VAE"
    raise CheckpointError(f"{source}: {what}: no `first_stage_model.*`, `encoder.down.*` or `encoder.down_blocks.*` "
                          f"keys (found e.g. {keys[:5]}). Pass a VAE file, a diffusers vae/ folder or a whole "
                          "checkpoint.")


def config_from_shapes(sd, base=SD, source="checkpoint"):
    """Architecture read off the tensor shapes of an original- or diffusers-layout VAE state dict; the fields that
    shapes cannot tell (norm_num_groups, sample_size, scaling_factor, shift_factor, force_upcast) come from `base`."""
    block = ("encoder.down.{}.block.{}.conv1.weight" if "encoder.down.0.block.0.conv1.weight" in sd
             else "encoder.down_blocks.{}.resnets.{}.conv1.weight")
    for key in (block.format(0, 0), "encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight"):
        if key not in sd:
            raise CheckpointError(f"{source}: cannot read the VAE's shape: key '{key}' is missing")
    n = next(i for i in range(1, 100) if block.format(i, 0) not in sd)
    layers = next(j for j in range(1, 100) if block.format(0, j) not in sd)
    return dataclasses.replace(
        base, in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
        latent_channels=sd["decoder.conv_in.weight"].shape[1], layers_per_block=layers,
        block_out_channels=tuple(sd[block.format(i, 0)].shape[0] for i in range(n)),
        use_quant_conv="quant_conv.weight" in sd, use_post_quant_conv="post_quant_conv.weight" in sd)
