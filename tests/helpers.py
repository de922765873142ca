"""Shared test helpers: tiny configs of every real UNet structure, random weights where every parameter matters
(minunet.models.random_init), the manifest reader, UNet inputs and the diffusers twin."""
import json

import torch

from minunet import UNetConfig
from minunet.models.random_init import randomize_  # noqa: F401 (the one random init, re-exported for the tests)
from minunet.weights import MANIFESTS

# Small widths of the official structures (same block types, depths pattern, projection kind, context widths).
TINY = {
    "sd15": UNetConfig(block_out_channels=(32, 64, 64, 64), num_heads=(8, 8, 8, 8), context_dim=768),
    "sd15-inpainting": UNetConfig(in_channels=9, block_out_channels=(32, 64, 64, 64), num_heads=(8, 8, 8, 8)),
    # linear-projection families keep the official head size 64, so single files read back the same heads
    "sd21": UNetConfig(block_out_channels=(64, 128, 128, 128), num_heads=(1, 2, 2, 2), context_dim=1024,
                       use_linear_projection=True, upcast_attention=True),
    "sdxl": UNetConfig(block_out_channels=(64, 128, 128), attention_levels=(False, True, True),
                       transformer_depth=(0, 2, 3), transformer_depth_mid=3, num_heads=(1, 2, 2), context_dim=2048,
                       use_linear_projection=True, adm_in_channels=1280 + 6 * 256),
    "sdxl-refiner": UNetConfig(block_out_channels=(64, 128, 128, 128), attention_levels=(False, True, True, False),
                               transformer_depth=(0, 2, 2, 0), transformer_depth_mid=2, num_heads=(1, 2, 2, 2),
                               context_dim=1280, use_linear_projection=True, adm_in_channels=1280 + 5 * 256),
}


def read_manifest(name):
    """weights/manifests/NAME (`key<TAB>[shape]<TAB>dtype` per tensor) -> {key: (shape list, dtype string)}."""
    rows = [line.split("\t") for line in (MANIFESTS / name).read_text().splitlines() if line.strip()]
    return {key: (json.loads(shape), dtype) for key, shape, dtype in rows}


def manifest_shapes(name):
    return {key: shape for key, (shape, _) in read_manifest(name).items()}


def meta_state_dict(*names):
    """The tensors of one or more manifests as empty meta tensors of the right shape and dtype."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64, "I32": torch.int32}
    return {key: torch.empty(shape, device="meta", dtype=dtypes[dtype])
            for name in names for key, (shape, dtype) in read_manifest(name).items()}


def unet_inputs(cfg, batch=2, h=12, w=20, tokens=77, seed=1):
    """Batch 2, different timesteps, a non-square latent whose sizes halve to odd numbers (minunet.cli.parity's
    builder, the `parity` command's): (x, t, context, UNet keyword arguments)."""
    from minunet.cli.parity import random_inputs

    x, t, ctx, added = random_inputs(cfg, (h, w), batch, seed, tokens=tokens, timesteps=[999.0, 17.0][:batch])
    return x, t, ctx, added or {}


def diffusers_unet(ours):
    """diffusers' UNet2DConditionModel with the config and weights of the minunet model `ours` (strict)."""
    from minunet.cli.parity import diffusers_twin

    return diffusers_twin(None, ours)


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
