"""Random LoRA files in the kohya / A1111 and diffusers / PEFT formats, written the way their trainers name keys."""
import math

import torch
from torch import nn

from minunet.keymaps.unet import unet_key_map

# the modules a LoRA file covers: attention and feed-forward, projections, resnet convs (3x3: LoCon), time
# projection, shortcut and resampler convs, conv_in / conv_out; CLIP attention and MLP
UNET_LEAVES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
UNET_TOP = ("conv_in", "conv_out")
TEXT_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_modules(model, leaves, top=()):
    """{path: module} of the model's Linear / Conv2d modules whose path ends with one of `leaves` (or is in `top`)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and (n in top or any(n == leaf or n.endswith("." + leaf) for leaf in leaves))}


def random_lora(modules, seed=0, ranks=(4, 2), alphas=(8.0, 1.0)):
    """{path: (down, up, alpha)}: ranks and alphas alternate over the modules, so both vary within a file;
    down (r, in[, kh, kw]) as a conv of the module's kernel, up (out, r[, 1, 1]); large enough to matter."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (path, m) in enumerate(sorted(modules.items())):
        r, alpha = ranks[i % len(ranks)], alphas[i % len(alphas)]
        w = m.weight
        down = torch.randn((r, *w.shape[1:]), generator=g) / math.sqrt(math.prod(w.shape[1:]))
        up = torch.randn((w.shape[0], r) + ((1, 1) if w.ndim == 4 else ()), generator=g) * (0.5 / math.sqrt(r))
        out[path] = (down, up, alpha)
    return out


def original_names(unet):
    """{diffusers module path: original-layout module path} of a minunet UNet (SDXL kohya files use these)."""
    mapping = unet_key_map(list(unet.state_dict()), unet.config)
    return {ours[:-len(".weight")]: orig[:-len(".weight")] for orig, ours in mapping.items() if ours.endswith(".weight")}


def kohya(parts, rename=None):
    """parts: {kohya prefix ("lora_unet_", "lora_te1_", ...): {path: (down, up, alpha)}} -> kohya state dict.
    `rename` (for "lora_unet_"): module path -> the name the file uses (e.g. original layout)."""
    out = {}
    for prefix, layers in parts.items():
        for path, (down, up, alpha) in layers.items():
            name = rename[path] if rename is not None and prefix == "lora_unet_" else path
            stem = prefix + name.replace(".", "_")
            out[stem + ".lora_down.weight"] = down.contiguous()
            out[stem + ".lora_up.weight"] = up.contiguous()
            out[stem + ".alpha"] = torch.tensor(alpha)
    return out


def peft(parts):
    """parts: {component ("unet", "text_encoder", ...): {path: (down, up, alpha)}} -> PEFT state dict and the
    lora_adapter_metadata diffusers writes (r, lora_alpha, rank_pattern, alpha_pattern per component)."""
    import json

    out, meta = {}, {}
    for component, layers in parts.items():
        ranks = {p: d.shape[0] for p, (d, _, _) in layers.items()}
        alphas = {p: a for p, (_, _, a) in layers.items()}
        r0, a0 = next(iter(ranks.values())), next(iter(alphas.values()))
        meta.update({f"{component}.r": r0, f"{component}.lora_alpha": a0,
                     f"{component}.rank_pattern": {p: r for p, r in ranks.items() if r != r0},
                     f"{component}.alpha_pattern": {p: a for p, a in alphas.items() if a != a0},
                     f"{component}.target_modules": sorted(layers)})
        for path, (down, up, _) in layers.items():
            out[f"{component}.{path}.lora_A.weight"] = down.contiguous()
            out[f"{component}.{path}.lora_B.weight"] = up.contiguous()
    return out, {"format": "pt", "lora_adapter_metadata": json.dumps(meta)}
