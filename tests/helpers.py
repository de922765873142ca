"""Shared test helpers: tiny configs of every real UNet structure, random weights where every parameter matters."""
import math

import torch

from minunet import UNetConfig

# Small widths of the official structures (same block types, depths pattern, projection kind, context widths).
TINY = {
    "sd15": UNetConfig(block_out_channels=(32, 64, 64, 64), num_heads=(8, 8, 8, 8), context_dim=768),
    "sd15_inpaint": UNetConfig(in_channels=9, block_out_channels=(32, 64, 64, 64), num_heads=(8, 8, 8, 8)),
    # linear-projection families keep the official head size 64, so single files read back the same heads
    "sd21": UNetConfig(block_out_channels=(64, 128, 128, 128), num_heads=(1, 2, 2, 2), context_dim=1024,
                       use_linear_projection=True, upcast_attention=True),
    "sdxl": UNetConfig(block_out_channels=(64, 128, 128), attention_levels=(False, True, True),
                       transformer_depth=(0, 2, 3), transformer_depth_mid=3, num_heads=(1, 2, 2), context_dim=2048,
                       use_linear_projection=True, adm_in_channels=1280 + 6 * 256),
    "sdxl_refiner": UNetConfig(block_out_channels=(64, 128, 128, 128), attention_levels=(False, True, True, False),
                               transformer_depth=(0, 2, 2, 0), transformer_depth_mid=2, num_heads=(1, 2, 2, 2),
                               context_dim=1280, use_linear_projection=True, adm_in_channels=1280 + 5 * 256),
}


@torch.no_grad()
def randomize_(module, seed=0):
    """Re-draw every parameter so that each one changes the output: matrices ~ N(0, 1/fan_in),
    norm scales ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.2^2) (no zero init anywhere)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        elif name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def unet_inputs(cfg, batch=2, h=12, w=20, tokens=77, seed=1):
    """Batch 2, different timesteps, a non-square latent whose sizes halve to odd numbers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, h, w, generator=g)
    t = torch.tensor([999.0, 17.0])[:batch]
    ctx = torch.randn(batch, tokens, cfg.context_dim, generator=g)
    kw = {}
    if cfg.adm_in_channels is not None:
        n_ids = (cfg.adm_in_channels - 1280) // cfg.addition_time_embed_dim
        kw["text_embeds"] = torch.randn(batch, 1280, generator=g)
        ids = [1024.0, 768.0, 0.0, 16.0, 1024.0, 1024.0] if n_ids == 6 else [1024.0, 768.0, 0.0, 16.0, 6.0]
        kw["time_ids"] = torch.tensor([ids, [512.0 + i for i in ids]])[:batch]
    return x, t, ctx, kw


def diffusers_unet(cfg, state_dict=None):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(**cfg.to_diffusers()).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model


def diffusers_kwargs(kw):
    if not kw:
        return {}
    return {"added_cond_kwargs": {"text_embeds": kw["text_embeds"], "time_ids": kw["time_ids"]}}


def assert_close(actual, expected, rel=1e-5, msg=None):
    """Equal within `rel` of the expected tensor's largest magnitude (and `rel` elementwise-relative):
    the float32 round-off of two implementations of the same graph, at any activation scale."""
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-30),
                               msg=(lambda m: f"{msg}: {m}") if msg else None)
