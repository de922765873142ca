"""UNetConfig: the few numbers that pick out every official SD UNet, with presets (diffusers config.json <-> UNetConfig:
minunet.loading.configs)."""
from dataclasses import asdict, dataclass

from .. import checks


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4                                   # 9 for inpainting: latents ++ mask ++ masked-image latents
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)     # channels per resolution level
    layers_per_block: int = 2                              # resnets per down level (up levels have one more)
    attention_levels: tuple = (True, True, True, False)    # which down levels have transformers (up: mirrored)
    transformer_depth: tuple = (1, 1, 1, 1)                # transformer blocks per attention, per level
    transformer_depth_mid: int = 1
    num_heads: tuple = (8, 8, 8, 8)                        # attention heads per level (mid: the last)
    context_dim: int = 768                                 # width of the text tokens cross-attention reads
    use_linear_projection: bool = False                    # proj_in/out Linear (SD 2, SDXL) or 1x1 conv (SD 1)
    upcast_attention: bool = False                         # attention in fp32 for half inputs (SD 2.1 768-v)
    adm_in_channels: int | None = None                     # SDXL: pooled text (1280) + 256 per size/crop id
    addition_time_embed_dim: int = 256                     # width of each size/crop/aesthetic id embedding
    norm_num_groups: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self):
        # canonical form: tuples, and depth 0 at levels without attention (their depth means nothing)
        fix = object.__setattr__
        for f in ("block_out_channels", "attention_levels", "transformer_depth", "num_heads"):
            if not isinstance(getattr(self, f), (list, tuple)):
                raise TypeError(f"UNetConfig: {f} must be a list (one entry per level), got {getattr(self, f)!r}")
            fix(self, f, tuple(getattr(self, f)))
        self._check_fields()
        fix(self, "transformer_depth", tuple(d if a else 0 for d, a in zip(self.transformer_depth, self.attention_levels)))
        n = len(self.block_out_channels)
        if not (len(self.attention_levels) == len(self.transformer_depth) == len(self.num_heads) == n):
            raise ValueError(f"UNetConfig: {n} levels but attention_levels, transformer_depth and num_heads "
                             f"have {len(self.attention_levels)}, {len(self.transformer_depth)}, {len(self.num_heads)}")
        for c, h in zip(self.block_out_channels, self.num_heads):
            if c % h or c % self.norm_num_groups:
                raise ValueError(f"UNetConfig: width {c} is not divisible by its {h} heads and "
                                 f"{self.norm_num_groups} norm groups")

    def _check_fields(self):
        """Types and ranges of every field (names as the dataclass's)."""
        n = len(self.block_out_channels)
        for f in ("in_channels", "out_channels", "layers_per_block", "context_dim", "addition_time_embed_dim",
                  "norm_num_groups"):
            checks.integer(f"UNetConfig: {f}", getattr(self, f), 1)
        checks.integer("UNetConfig: transformer_depth_mid", self.transformer_depth_mid, 0)
        checks.int_tuple("UNetConfig: block_out_channels", self.block_out_channels, 1)
        checks.int_tuple("UNetConfig: num_heads", self.num_heads, 1, n)
        checks.int_tuple("UNetConfig: transformer_depth", self.transformer_depth, 0, n)
        if len(self.attention_levels) != n:
            raise ValueError(f"UNetConfig: attention_levels has {len(self.attention_levels)} entries for {n} levels")
        for i, a in enumerate(self.attention_levels):
            checks.flag(f"UNetConfig: attention_levels[{i}]", a)
        checks.flag("UNetConfig: use_linear_projection", self.use_linear_projection)
        checks.flag("UNetConfig: upcast_attention", self.upcast_attention)
        if self.adm_in_channels is not None:
            checks.integer("UNetConfig: adm_in_channels", self.adm_in_channels, 1)
        checks.number("UNetConfig: norm_eps", self.norm_eps, 0, low_open=True)

    @property
    def time_embed_dim(self):
        return 4 * self.block_out_channels[0]

    def asdict(self):
        return asdict(self)


SD15 = UNetConfig()
SD21 = UNetConfig(num_heads=(5, 10, 20, 20), context_dim=1024, use_linear_projection=True, upcast_attention=True)
SDXL = UNetConfig(
    block_out_channels=(320, 640, 1280), attention_levels=(False, True, True), transformer_depth=(1, 2, 10),
    transformer_depth_mid=10, num_heads=(5, 10, 20), context_dim=2048, use_linear_projection=True,
    adm_in_channels=2816)
SDXL_REFINER = UNetConfig(
    block_out_channels=(384, 768, 1536, 1536), attention_levels=(False, True, True, False),
    transformer_depth=(4, 4, 4, 4), transformer_depth_mid=4, num_heads=(6, 12, 24, 24), context_dim=1280,
    use_linear_projection=True, adm_in_channels=2560)
PRESETS = {"sd15": SD15, "sd21": SD21, "sdxl": SDXL, "sdxl-refiner": SDXL_REFINER}
# the structures (any widths), named as everywhere in minunet; each preset is one official model of a family
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner")


def family(cfg):
    """One of FAMILIES from the structure alone (any widths): what text encoders, defaults and key layout go with it."""
    if cfg.adm_in_channels is None:
        return "sd2" if cfg.use_linear_projection else "sd1"
    return "sdxl-refiner" if len(cfg.block_out_channels) == 4 else "sdxl"


def preset_name(cfg):
    """The official model this config is (ignoring upcast and the inpainting input), or None."""
    for name, preset in PRESETS.items():
        same = cfg.__class__(**{**cfg.asdict(), "in_channels": 4, "upcast_attention": preset.upcast_attention})
        if same == preset:
            return name + ("-inpainting" if cfg.in_channels == 9 else "")
    return None


def describe(cfg):
    name = preset_name(cfg)
    return f"{name} UNet" if name else f"{family(cfg)}-family UNet with widths {list(cfg.block_out_channels)}"
