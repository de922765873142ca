"""The VAE's original (CompVis `first_stage_model`) layout -> minunet (= diffusers) names, as data.

The map works on module paths: a checkpoint key is `<module path>.<weight|bias>`, the module path is looked up
whole (never a substring replace), and the leaf is carried over. The only reshape sits next to its renames: the
mid-block attention's q / k / v / proj_out are 1x1 convs [C, C, 1, 1] in the original and Linear [C, C] here.
"""
from ..errors import CheckpointError

PREFIX = "first_stage_model."  # the VAE inside a whole SD / SDXL checkpoint

# Keys of a whole checkpoint that are not the VAE and that a VAE loader skips: UNet, text encoders, EMA copies.
IGNORED_PREFIXES = ("model.diffusion_model.", "cond_stage_model.", "conditioner.", "model_ema.",
                    "loss.")  # `loss.*`: LPIPS / discriminator weights some VAE training checkpoints still carry
# The DDPM schedule buffers of the SD 1.x / 2.x files.
IGNORED_KEYS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2"}

CONV1X1_AS_LINEAR = "conv1x1 <-> linear"  # reshape tag: [C, C, 1, 1] in the original, [C, C] in diffusers

# Parts whose names do not depend on the number of blocks.
FIXED = [
    ("encoder.conv_in", "encoder.conv_in"),
    ("encoder.norm_out", "encoder.conv_norm_out"),
    ("encoder.conv_out", "encoder.conv_out"),
    ("quant_conv", "quant_conv"),
    ("post_quant_conv", "post_quant_conv"),
    ("decoder.conv_in", "decoder.conv_in"),
    ("decoder.norm_out", "decoder.conv_norm_out"),
    ("decoder.conv_out", "decoder.conv_out"),
]
RESNET = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
          ("nin_shortcut", "conv_shortcut")]
ATTENTION = [("norm", "group_norm", None), ("q", "to_q", CONV1X1_AS_LINEAR), ("k", "to_k", CONV1X1_AS_LINEAR),
             ("v", "to_v", CONV1X1_AS_LINEAR), ("proj_out", "to_out.0", CONV1X1_AS_LINEAR)]

# Old diffusers attention names, still used by the SD 1.5 / 2.x `vae/diffusion_pytorch_model.safetensors` on the Hub.
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def module_map(n_blocks, layers_per_block):
    """[(original module path, diffusers module path, reshape tag or None)] for a VAE of this depth."""
    rows = [(o, d, None) for o, d in FIXED]

    def resnet(o, d):
        rows.extend((f"{o}.{a}", f"{d}.{b}", None) for a, b in RESNET)

    for side in ("encoder", "decoder"):
        resnet(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0")
        resnet(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1")
        rows.extend((f"{side}.mid.attn_1.{a}", f"{side}.mid_block.attentions.0.{b}", r) for a, b, r in ATTENTION)
    for i in range(n_blocks):
        last = i == n_blocks - 1
        for j in range(layers_per_block):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        if not last:
            rows.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", None))
        # the original numbers decoder levels by resolution: up.0 is the last (highest-resolution) up block
        o = n_blocks - 1 - i
        for j in range(layers_per_block + 1):  # decoder blocks have one resnet more than encoder blocks
            resnet(f"decoder.up.{o}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}")
        if not last:
            rows.append((f"decoder.up.{o}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv", None))
    targets = [d for _, d, _ in rows]
    assert len(set(targets)) == len(targets) and len({o for o, _, _ in rows}) == len(rows), "VAE key map not one-to-one"
    return rows


def _convert(state_dict, table, reshape, source, what):
    out, unknown = {}, []
    for key, t in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module not in table or leaf not in ("weight", "bias"):
            unknown.append(key)
            continue
        name, tag = table[module]
        if tag == CONV1X1_AS_LINEAR and leaf == "weight":
            t = reshape(t)
        out[f"{name}.{leaf}"] = t
    if unknown:  # every key must be consumed: a key with no place in the model is an error, never dropped
        raise CheckpointError(f"{source}: {len(unknown)} {what} keys have no place in the VAE: "
                              + ", ".join(sorted(unknown)[:20]) + (" ..." if len(unknown) > 20 else "")
                              + ". Is this a VAE of another family (e.g. with a different block layout)?")
    return out


def original_to_diffusers(state_dict, n_blocks, layers_per_block, source="checkpoint"):
    """Rename an original-layout VAE state dict (no `first_stage_model.` prefix) to diffusers names."""
    table = {o: (d, tag) for o, d, tag in module_map(n_blocks, layers_per_block)}

    def to_linear(t):  # [C, C, 1, 1] -> [C, C]; anything else is left for the strict shape check to report
        return t.reshape(t.shape[:2]) if t.ndim == 4 and tuple(t.shape[2:]) == (1, 1) else t

    return _convert(state_dict, table, to_linear, source, "original-layout")


def diffusers_to_original(state_dict, n_blocks, layers_per_block, source="state dict"):
    """The inverse map: diffusers names -> original names (used to write original-layout files)."""
    table = {d: (o, tag) for o, d, tag in module_map(n_blocks, layers_per_block)}
    return _convert(state_dict, table, lambda t: t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t, source,
                    "diffusers-layout")


def rename_legacy_attention(state_dict):
    """`{encoder,decoder}.mid_block.attentions.0.{query,key,value,proj_attn}.*` -> `to_q / to_k / to_v / to_out.0`."""
    out = {}
    for key, t in state_dict.items():
        parts = key.split(".")
        if (len(parts) == 6 and parts[0] in ("encoder", "decoder") and parts[1:4] == ["mid_block", "attentions", "0"]
                and parts[4] in LEGACY_ATTENTION):
            key = ".".join(parts[:4] + [LEGACY_ATTENTION[parts[4]], parts[5]])
        if key in out:
            raise CheckpointError(f"VAE state dict holds both the old and the new name of '{key}'")
        out[key] = t
    return out


def split_whole_checkpoint(state_dict, source):
    """The VAE of a whole SD / SDXL checkpoint, prefix removed; other known parts skipped, unknown keys an error."""
    vae, unknown = {}, []
    for key, t in state_dict.items():
        if key.startswith(PREFIX):
            vae[key[len(PREFIX):]] = t
        elif not (key.startswith(IGNORED_PREFIXES) or key in IGNORED_KEYS):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} keys belong to no known part of an SD checkpoint "
                              f"(UNet, VAE, text encoders, EMA, schedule): " + ", ".join(sorted(unknown)[:20]))
    return vae
