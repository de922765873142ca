"""UNetConfig: the few numbers that pick out every official SD UNet, with presets and a diffusers translator."""
from dataclasses import asdict, dataclass

from .. import checks
from ..errors import CheckpointError


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

    def to_diffusers(self):
        """The equivalent diffusers UNet2DConditionModel config (used by tests, benchmarks and `parity`)."""
        cfg = dict(
            in_channels=self.in_channels, out_channels=self.out_channels,
            block_out_channels=list(self.block_out_channels), layers_per_block=self.layers_per_block,
            down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels],
            up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels)],
            transformer_layers_per_block=list(self.transformer_depth[:-1]) + [self.transformer_depth_mid],
            attention_head_dim=list(self.num_heads), cross_attention_dim=self.context_dim,
            use_linear_projection=self.use_linear_projection, upcast_attention=self.upcast_attention,
            norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
        )
        if self.transformer_depth_mid != self.transformer_depth[-1]:
            if self.attention_levels[-1]:
                raise ValueError("diffusers takes the mid depth from the last level: cannot express this config")
        if self.adm_in_channels is not None:
            cfg.update(addition_embed_type="text_time", addition_time_embed_dim=self.addition_time_embed_dim,
                       projection_class_embeddings_input_dim=self.adm_in_channels)
        return cfg

    @classmethod
    def from_diffusers(cls, cfg, source="config.json"):
        """Translate a diffusers UNet2DConditionModel config; raise a CheckpointError naming the file and the field
        for any field or value minunet does not do, and for wrong types and ranges."""
        try:
            return cls._from_diffusers(cfg, source)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: unsupported UNet configuration: {e}") from None

    @classmethod
    def _from_diffusers(cls, cfg, source):
        problems = []
        for key, value in cfg.items():
            if key.startswith("_") or key in _TRANSLATED or key in _IGNORED:
                continue
            if key not in _FIXED:
                problems.append(f"unknown field '{key}' = {value!r}")
            elif value not in _FIXED[key]:
                problems.append(f"'{key}' = {value!r} (supported: {_FIXED[key]})")
        if problems:
            raise ValueError(f"{source}: unsupported UNet configuration: " + "; ".join(problems))

        widths = checks.int_tuple("block_out_channels", cfg.get("block_out_channels", (320, 640, 1280, 1280)))
        n = len(widths)
        def per_level(v):
            return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n

        for f in ("down_block_types", "up_block_types"):
            if f in cfg and not (isinstance(cfg[f], (list, tuple)) and len(cfg[f]) == n):
                raise ValueError(f"'{f}' must be a list of {n} block types (one per block_out_channels), "
                                 f"got {cfg[f]!r}")

        down = cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
        up = cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
        for t in down:
            if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ValueError(f"{source}: unsupported down block type '{t}'")
        levels = tuple(t == "CrossAttnDownBlock2D" for t in down)
        if list(up) != ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)]:
            raise ValueError(f"{source}: up_block_types {up} do not mirror down_block_types {down}")
        heads = cfg.get("num_attention_heads")
        if heads is None:
            heads = cfg.get("attention_head_dim", 8)  # diffusers' misnomer: it is the number of heads
        depth = per_level(cfg.get("transformer_layers_per_block", 1))
        if any(isinstance(d, (list, tuple)) for d in depth):
            raise ValueError(f"{source}: per-resnet transformer depths are not supported")
        add = cfg.get("addition_embed_type")
        return cls(
            in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
            block_out_channels=widths,
            layers_per_block=cfg.get("layers_per_block", 2), attention_levels=levels,
            transformer_depth=depth, transformer_depth_mid=depth[-1], num_heads=per_level(heads),
            context_dim=cfg.get("cross_attention_dim", 1280), use_linear_projection=bool(cfg.get("use_linear_projection")),
            upcast_attention=bool(cfg.get("upcast_attention")),  # configs may say null
            adm_in_channels=cfg.get("projection_class_embeddings_input_dim") if add == "text_time" else None,
            addition_time_embed_dim=cfg.get("addition_time_embed_dim") or 256,
            norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5),
        )

    def asdict(self):
        return asdict(self)


# fields read by from_diffusers
_TRANSLATED = {
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
    "transformer_layers_per_block", "num_attention_heads", "attention_head_dim", "cross_attention_dim",
    "use_linear_projection", "upcast_attention", "projection_class_embeddings_input_dim",
    "addition_time_embed_dim", "norm_num_groups", "norm_eps",
}
# fields with no effect on the network
_IGNORED = {"sample_size", "addition_embed_type_num_heads", "dropout"}
# fields that must hold one of these values (the official checkpoints' values and their equivalents)
_FIXED = {
    "act_fn": ["silu"], "center_input_sample": [False], "class_embed_type": [None], "conv_in_kernel": [3],
    "conv_out_kernel": [3], "cross_attention_norm": [None], "downsample_padding": [1], "dual_cross_attention": [False],
    "encoder_hid_dim": [None], "encoder_hid_dim_type": [None], "flip_sin_to_cos": [True], "freq_shift": [0],
    "mid_block_scale_factor": [1], "mid_block_type": ["UNetMidBlock2DCrossAttn", None], "num_class_embeds": [None],
    "only_cross_attention": [False], "resnet_out_scale_factor": [1.0], "resnet_skip_time_act": [False],
    "resnet_time_scale_shift": ["default"], "time_cond_proj_dim": [None], "time_embedding_act_fn": [None],
    "time_embedding_dim": [None], "time_embedding_type": ["positional"], "timestep_post_act": [None],
    "addition_embed_type": [None, "text_time"], "mid_block_only_cross_attention": [None, False],
    "attention_type": ["default"], "reverse_transformer_layers_per_block": [None],
    "class_embeddings_concat": [False],
}

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
