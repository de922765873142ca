"""UNet key map: original (CompVis / Stability `openaimodel`) names <-> minunet (= diffusers) names, as data.

Outer prefixes come from one loop over the config's levels; inside a resnet a few names change, inside a
transformer nothing does. `unet_key_map(cfg)` returns {original key: minunet key} for every tensor of the model,
so a file is mapped by whole-key lookup (never by substring replacement) and checked one-to-one.
"""
PREFIX = "model.diffusion_model."

# inside a resnet: original -> diffusers (`in_layers` = GroupNorm, SiLU, conv; `out_layers` = GN, SiLU, Dropout, conv)
RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
          ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]
TOP = [("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
       ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
       ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")]


def block_prefixes(cfg):
    """[(original prefix, minunet prefix, kind)] for every block; kind is 'resnet', 'attn' or 'plain'."""
    n, L = len(cfg.block_out_channels), cfg.layers_per_block
    out = [(a, b, "plain") for a, b in TOP]
    for i in range(n):  # encoder: input_blocks 1.. hold L (resnet[, transformer]) pairs, then one downsampler
        for j in range(L):
            k = 1 + i * (L + 1) + j
            out.append((f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", "resnet"))
            out.append((f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", "attn"))
        if i < n - 1:
            out.append((f"input_blocks.{(i + 1) * (L + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv", "plain"))
    out += [("middle_block.0", "mid_block.resnets.0", "resnet"), ("middle_block.1", "mid_block.attentions.0", "attn"),
            ("middle_block.2", "mid_block.resnets.1", "resnet")]
    for i in range(n):  # decoder: output_blocks hold L+1 (resnet[, transformer][, upsampler]) triples per level
        has_attn = cfg.attention_levels[n - 1 - i]
        for j in range(L + 1):
            k = i * (L + 1) + j
            out.append((f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", "resnet"))
            out.append((f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", "attn"))
        if i < n - 1:
            out.append((f"output_blocks.{k}.{2 if has_attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv", "plain"))
    return out


def unet_key_map(model_keys, cfg):
    """{original key without PREFIX: minunet key} covering exactly `model_keys` (a model's state-dict keys)."""
    return map_by_prefixes(model_keys, block_prefixes(cfg))


def map_by_prefixes(model_keys, prefixes):
    """{original key: minunet key} for `model_keys`, from [(original prefix, minunet prefix, kind)] block prefixes
    (kind 'resnet' renames the resnet's inner names, others keep them); checked one-to-one."""
    table = {}
    for orig, ours, kind in prefixes:
        inner = RESNET if kind == "resnet" else [("", "")]  # transformers keep their inner names
        for a, b in inner:
            o, m = f"{orig}.{a}".rstrip("."), f"{ours}.{b}".rstrip(".")
            table[m] = o
    mapping = {}
    for key in model_keys:
        module, _, leaf = key.rpartition(".")
        # longest minunet module prefix present in the table (anchored on whole dotted components)
        parts = module.split(".")
        for cut in range(len(parts), 0, -1):
            head = ".".join(parts[:cut])
            if head in table:
                rest = ".".join(parts[cut:] + [leaf])
                mapping[f"{table[head]}.{rest}"] = key
                break
        else:
            raise KeyError(f"no original-layout name for minunet key '{key}'")
    if len(set(mapping.values())) != len(mapping) or len(mapping) != len(model_keys):
        raise AssertionError("UNet key map is not one-to-one")
    return mapping
