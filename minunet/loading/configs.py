"""diffusers `config.json` <-> minunet's config dataclasses, for the four models, in one table shape.

Each model's translation is a Fields table: the keys it reads (`translated`), the keys with no effect on the
network (`ignored`), and the keys that must hold one of a few values (`fixed`: key -> (allowed values, diffusers'
default when the file leaves the key out)). A key in none of them, or a fixed key with another value, is an
error naming the file and the key: the translators raise on what minunet does not build, never skip it.
Keys starting with "_" (`_class_name`, `_diffusers_version`, ...) are diffusers' metadata.

    unet_config(raw, source)    UNet2DConditionModel          -> UNetConfig       (CheckpointError)
    video_config(raw, source)   UNet3DConditionModel          -> VideoUNetConfig  (ValueError)
    kunet_config(raw, source)   UNet2DConditionModel, K blocks -> KUNetConfig     (ValueError)
    vae_config(raw, source)     AutoencoderKL                 -> VAEConfig        (CheckpointError)
    to_diffusers(config)        any of the four back to diffusers' keyword arguments (tests, benchmarks, parity)
"""
import dataclasses
from typing import NamedTuple

from .. import checks
from ..errors import CheckpointError
from ..models.config import UNetConfig
from ..models.kunet import KUNetConfig
from ..models.vae import VAEConfig
from ..models.video import VideoUNetConfig


class Fields(NamedTuple):
    translated: frozenset
    ignored: frozenset
    fixed: dict  # key -> (allowed values, diffusers' default when the key is missing)


def field_problems(raw, fields):
    """What a config dict holds that the translation does not do: unknown keys first, then fixed keys (a missing
    one stands at diffusers' default, which need not be allowed)."""
    problems = [f"unknown field '{key}' = {value!r}" for key, value in raw.items()
                if not key.startswith("_") and key not in fields.translated | fields.ignored | fields.fixed.keys()]
    for key, (allowed, default) in fields.fixed.items():
        value = raw.get(key, default)
        if value not in allowed:
            problems.append(f"'{key}' = {value!r}" + ("" if key in raw else " (diffusers' default, not in the "
                            "file)") + f" (supported: {allowed})")
    return problems


def _same(*allowed):
    """A fixed key whose missing value is fine: diffusers' default is the first allowed value."""
    return list(allowed), allowed[0]


def _as_checkpoint_error(translate, raw, source, what):
    """translate(raw, source), with a wrong type or range reported as a CheckpointError naming the file."""
    try:
        return translate(raw, source)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: {what}: {e}") from None


# ---- the image UNet ----------------------------------------------------------------------------------------------

UNET = Fields(
    translated=frozenset({
        "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
        "transformer_layers_per_block", "num_attention_heads", "attention_head_dim", "cross_attention_dim",
        "use_linear_projection", "upcast_attention", "projection_class_embeddings_input_dim",
        "addition_time_embed_dim", "norm_num_groups", "norm_eps"}),
    ignored=frozenset({"sample_size", "addition_embed_type_num_heads", "dropout"}),
    fixed={  # the official checkpoints' values and their equivalents
        "act_fn": _same("silu"), "center_input_sample": _same(False), "class_embed_type": _same(None),
        "conv_in_kernel": _same(3), "conv_out_kernel": _same(3), "cross_attention_norm": _same(None),
        "downsample_padding": _same(1), "dual_cross_attention": _same(False), "encoder_hid_dim": _same(None),
        "encoder_hid_dim_type": _same(None), "flip_sin_to_cos": _same(True), "freq_shift": _same(0),
        "mid_block_scale_factor": _same(1), "mid_block_type": _same("UNetMidBlock2DCrossAttn", None),
        "num_class_embeds": _same(None), "only_cross_attention": _same(False), "resnet_out_scale_factor": _same(1.0),
        "resnet_skip_time_act": _same(False), "resnet_time_scale_shift": _same("default"),
        "time_cond_proj_dim": _same(None), "time_embedding_act_fn": _same(None), "time_embedding_dim": _same(None),
        "time_embedding_type": _same("positional"), "timestep_post_act": _same(None),
        "mid_block_only_cross_attention": _same(None, False), "attention_type": _same("default"),
        "reverse_transformer_layers_per_block": _same(None), "class_embeddings_concat": _same(False),
        "addition_embed_type": _same(None, "text_time")})


def unet_config(raw, source="config.json"):
    """A diffusers UNet2DConditionModel config -> UNetConfig; a CheckpointError naming the file and the field for
    any field or value minunet does not do, and for wrong types and ranges."""
    return _as_checkpoint_error(_unet_config, raw, source, "unsupported UNet configuration")


def _unet_config(cfg, source):
    problems = field_problems(cfg, UNET)
    if problems:
        raise ValueError(f"{source}: unsupported UNet configuration: " + "; ".join(problems))
    widths = checks.int_tuple("block_out_channels", cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    levels = _unet_levels(cfg, len(widths), source)
    heads = cfg.get("num_attention_heads")
    if heads is None:
        heads = cfg.get("attention_head_dim", 8)  # diffusers' misnomer: it is the number of heads
    depth = _per_level(cfg.get("transformer_layers_per_block", 1), len(widths))
    if any(isinstance(d, (list, tuple)) for d in depth):
        raise ValueError(f"{source}: per-resnet transformer depths are not supported")
    add = cfg.get("addition_embed_type")
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4), block_out_channels=widths,
        layers_per_block=cfg.get("layers_per_block", 2), attention_levels=levels,
        transformer_depth=depth, transformer_depth_mid=depth[-1], num_heads=_per_level(heads, len(widths)),
        context_dim=cfg.get("cross_attention_dim", 1280), use_linear_projection=bool(cfg.get("use_linear_projection")),
        upcast_attention=bool(cfg.get("upcast_attention")),  # configs may say null
        adm_in_channels=cfg.get("projection_class_embeddings_input_dim") if add == "text_time" else None,
        addition_time_embed_dim=cfg.get("addition_time_embed_dim") or 256,
        norm_num_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5))


def _per_level(v, n):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def _unet_levels(cfg, n, source):
    """attention_levels from the block types (the up blocks must mirror the down blocks)."""
    for f in ("down_block_types", "up_block_types"):
        if f in cfg and not (isinstance(cfg[f], (list, tuple)) and len(cfg[f]) == n):
            raise ValueError(f"'{f}' must be a list of {n} block types (one per block_out_channels), got {cfg[f]!r}")
    down = cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
    up = cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    for t in down:
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise ValueError(f"{source}: unsupported down block type '{t}'")
    levels = tuple(t == "CrossAttnDownBlock2D" for t in down)
    if list(up) != ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)]:
        raise ValueError(f"{source}: up_block_types {up} do not mirror down_block_types {down}")
    return levels


def _unet_to_diffusers(c: UNetConfig):
    cfg = dict(
        in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=list(c.block_out_channels), layers_per_block=c.layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention_levels],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention_levels)],
        transformer_layers_per_block=list(c.transformer_depth[:-1]) + [c.transformer_depth_mid],
        attention_head_dim=list(c.num_heads), cross_attention_dim=c.context_dim,
        use_linear_projection=c.use_linear_projection, upcast_attention=c.upcast_attention,
        norm_num_groups=c.norm_num_groups, norm_eps=c.norm_eps)
    if c.transformer_depth_mid != c.transformer_depth[-1] and c.attention_levels[-1]:
        raise ValueError("diffusers takes the mid depth from the last level: cannot express this config")
    if c.adm_in_channels is not None:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=c.addition_time_embed_dim,
                   projection_class_embeddings_input_dim=c.adm_in_channels)
    return cfg


# ---- the video UNet ----------------------------------------------------------------------------------------------

VIDEO = Fields(
    translated=frozenset({"in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                          "up_block_types", "attention_head_dim", "cross_attention_dim", "norm_num_groups",
                          "norm_eps"}),
    ignored=frozenset({"sample_size"}),
    fixed={"act_fn": _same("silu"), "downsample_padding": _same(1), "mid_block_scale_factor": _same(1),
           "num_attention_heads": _same(None), "time_cond_proj_dim": _same(None)})


def is_video_config(raw):
    """A diffusers config.json of a UNet3DConditionModel (by class name, or by its block types)."""
    blocks = list(raw.get("down_block_types") or []) + list(raw.get("up_block_types") or [])
    return raw.get("_class_name") == "UNet3DConditionModel" or any(str(b).endswith("3D") for b in blocks)


def video_config(cfg, source="config.json"):
    """A diffusers UNet3DConditionModel config -> VideoUNetConfig; a ValueError on any field or value minunet
    does not do."""
    problems = field_problems(cfg, VIDEO)
    head = cfg.get("attention_head_dim", 64)
    if isinstance(head, bool) or not isinstance(head, int):
        problems.append(f"'attention_head_dim' = {head!r} (the head size: one int for every level)")
    down = list(cfg.get("down_block_types", ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]))
    up = list(cfg.get("up_block_types", ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3))
    if any(t not in ("CrossAttnDownBlock3D", "DownBlock3D") for t in down):
        problems.append(f"down_block_types {down} (supported: CrossAttnDownBlock3D, DownBlock3D)")
    levels = tuple(t == "CrossAttnDownBlock3D" for t in down)
    if up != ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(levels)]:
        problems.append(f"up_block_types {up} do not mirror down_block_types {down}")
    if problems:
        raise ValueError(f"{source}: unsupported video UNet configuration: " + "; ".join(problems))
    return VideoUNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
        block_out_channels=tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280))),
        layers_per_block=cfg.get("layers_per_block", 2), attention_levels=levels, head_size=head,
        context_dim=cfg.get("cross_attention_dim", 1024), norm_num_groups=cfg.get("norm_num_groups", 32),
        norm_eps=cfg.get("norm_eps", 1e-5))


def _video_to_diffusers(c: VideoUNetConfig):
    return dict(
        in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=list(c.block_out_channels), layers_per_block=c.layers_per_block,
        down_block_types=["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in c.attention_levels],
        up_block_types=["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(c.attention_levels)],
        attention_head_dim=c.head_size, cross_attention_dim=c.context_dim,
        norm_num_groups=c.norm_num_groups, norm_eps=c.norm_eps)


# ---- the x2 upscaler's K-UNet ------------------------------------------------------------------------------------

# Values the K blocks never read (freq_shift, downsample_padding, mid_block_scale_factor, resnet_time_scale_shift)
# are allowed at the official value and at diffusers' default.
KUNET = Fields(
    translated=frozenset({"in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                          "up_block_types", "attention_head_dim", "cross_attention_dim", "time_cond_proj_dim",
                          "norm_eps"}),
    ignored=frozenset({"sample_size", "dropout"}),
    fixed={
        "time_embedding_type": (["fourier"], "positional"), "timestep_post_act": (["gelu"], None),
        "act_fn": (["gelu"], "silu"), "conv_in_kernel": ([1], 3), "conv_out_kernel": ([1], 3),
        "mid_block_type": ([None], "UNetMidBlock2DCrossAttn"), "norm_num_groups": ([None], 32),
        "flip_sin_to_cos": ([True], True), "freq_shift": ([0], 0), "center_input_sample": ([False], False),
        "class_embed_type": ([None], None), "num_class_embeds": ([None], None),
        "dual_cross_attention": ([False], False), "only_cross_attention": ([False], False),
        "upcast_attention": ([False], False), "use_linear_projection": ([False], False),
        "downsample_padding": ([1], 1), "mid_block_scale_factor": ([1], 1),
        "resnet_time_scale_shift": (["scale_shift", "default"], "default"), "time_embedding_dim": ([None], None),
        "time_embedding_act_fn": ([None], None), "addition_embed_type": ([None], None),
        "encoder_hid_dim": ([None], None), "encoder_hid_dim_type": ([None], None),
        "num_attention_heads": ([None], None), "cross_attention_norm": ([None], None),
        "class_embeddings_concat": ([False], False), "transformer_layers_per_block": ([1], 1),
        "reverse_transformer_layers_per_block": ([None], None), "resnet_skip_time_act": ([False], False),
        "resnet_out_scale_factor": ([1.0], 1.0), "projection_class_embeddings_input_dim": ([None], None),
        "addition_time_embed_dim": ([None], None), "addition_embed_type_num_heads": ([64], 64),
        "mid_block_only_cross_attention": ([None], None), "attention_type": (["default"], "default")})
# the K-UNet's values where diffusers' defaults differ (fourier, gelu, 1x1 convs, no mid block, no conv_norm_out, ...)
KUNET_NOT_DEFAULTS = {k: allowed[0] for k, (allowed, default) in KUNET.fixed.items() if allowed[0] != default}


def is_kunet_config(cfg):
    """Does this diffusers UNet config describe the K-UNet (any K* block or Fourier time features)?"""
    types = list(cfg.get("down_block_types") or []) + list(cfg.get("up_block_types") or [])
    return any(str(t).startswith("K") for t in types) or cfg.get("time_embedding_type") == "fourier"


def kunet_config(cfg, source="config.json"):
    """A diffusers config of the K-UNet -> KUNetConfig; a ValueError on any field or value minunet does not
    build (an unknown key such as the old `timestep_act_2` spelling included: diffusers ignores it silently)."""
    problems = field_problems(cfg, KUNET)
    n = len(cfg.get("block_out_channels", ()))
    down, up = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    want_down = ["KDownBlock2D"] + ["KCrossAttnDownBlock2D"] * (n - 1)
    want_up = ["KCrossAttnUpBlock2D"] * (n - 1) + ["KUpBlock2D"]
    if down != want_down or up != want_up:
        problems.append(f"block types {down} / {up} (supported: {want_down} / {want_up})")
    if not isinstance(cfg.get("time_cond_proj_dim"), int):
        problems.append(f"'time_cond_proj_dim' = {cfg.get('time_cond_proj_dim')!r} (the K-UNet needs an int)")
    if problems:
        raise ValueError(f"{source}: unsupported latent-upscaler UNet configuration: " + "; ".join(problems))
    return KUNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4),
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg.get("layers_per_block", 2),
        head_size=cfg.get("attention_head_dim", 8), context_dim=cfg.get("cross_attention_dim", 1280),
        time_cond_dim=cfg["time_cond_proj_dim"], norm_eps=cfg.get("norm_eps", 1e-5))


def _kunet_to_diffusers(c: KUNetConfig):
    n = len(c.block_out_channels)
    return dict(
        in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=list(c.block_out_channels), layers_per_block=c.layers_per_block,
        down_block_types=["KDownBlock2D"] + ["KCrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["KCrossAttnUpBlock2D"] * (n - 1) + ["KUpBlock2D"],
        attention_head_dim=c.head_size, cross_attention_dim=c.context_dim,
        time_cond_proj_dim=c.time_cond_dim, norm_eps=c.norm_eps, **KUNET_NOT_DEFAULTS)


# ---- the VAE -----------------------------------------------------------------------------------------------------

# What diffusers' AutoencoderKL assumes for a field its config.json leaves out (e.g. SD 1.5 has no scaling_factor).
VAE_DEFAULTS = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    block_out_channels=(64,), layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=32,
    scaling_factor=0.18215, shift_factor=None, force_upcast=True, use_quant_conv=True, use_post_quant_conv=True)
VAE = Fields(translated=frozenset(VAE_DEFAULTS), ignored=frozenset(),
             fixed={"act_fn": _same("silu"), "latents_mean": _same(None), "latents_std": _same(None),
                    "mid_block_add_attention": _same(True)})


def vae_config(raw, source="VAE config.json"):
    """An AutoencoderKL `config.json` dict -> VAEConfig; a CheckpointError naming the file and the field for
    anything this VAE does not implement and for wrong types or ranges."""
    return _as_checkpoint_error(_vae_config, raw, source, "VAE config not supported")


def _vae_config(raw, source):
    d = {**VAE_DEFAULTS, **raw}
    checks.int_tuple("block_out_channels", d["block_out_channels"], 1)
    n = len(d["block_out_channels"])
    problems = field_problems(raw, VAE)
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
    kw = {f.name: d[f.name] for f in dataclasses.fields(VAEConfig) if f.name in d}
    return VAEConfig(**{**kw, "block_out_channels": tuple(d["block_out_channels"]), "sample_size": size})


def _vae_to_diffusers(c: VAEConfig):
    n = len(c.block_out_channels)
    return {**dataclasses.asdict(c), "block_out_channels": list(c.block_out_channels), "act_fn": "silu",
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}


_TO_DIFFUSERS = {UNetConfig: _unet_to_diffusers, VideoUNetConfig: _video_to_diffusers,
                 KUNetConfig: _kunet_to_diffusers, VAEConfig: _vae_to_diffusers}


def to_diffusers(config):
    """The keyword arguments of the matching diffusers model (UNet2DConditionModel, UNet3DConditionModel,
    AutoencoderKL) for one of minunet's config dataclasses."""
    return _TO_DIFFUSERS[type(config)](config)
