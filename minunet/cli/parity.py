"""The parity harness: the same weights and inputs through minunet and diffusers, compared block by block.

Needs diffusers (`pip install minunet[test]`); minunet itself never imports it.
"""
import json
import tempfile
from pathlib import Path

import torch
from ..loading.configs import to_diffusers


def block_names(cfg):
    n = len(cfg.block_out_channels)
    return (["conv_in", "time_embedding"] + [f"down_blocks.{i}" for i in range(n)] + ["mid_block"]
            + [f"up_blocks.{i}" for i in range(n)] + ["conv_out"])


@torch.no_grad()
def capture_blocks(ours, theirs, x, t, context, added=None):
    """Run both UNets once with forward hooks on every top-level block (removed afterwards) ->
    [(block, ours' output, diffusers' output)] in forward order, so the first mismatch is where it starts."""
    outputs, handles = {}, []
    for name in block_names(ours.config):
        for side, model in (("ours", ours), ("theirs", theirs)):
            def hook(module, args, out, key=(side, name)):
                outputs[key] = (out[0] if isinstance(out, tuple) else out).detach().float()
            handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        added = added or {}
        ours(x, t, context, **added)
        theirs(x, t, context, added_cond_kwargs=added or None)
    finally:
        for h in handles:
            h.remove()
    return [(name, outputs["ours", name], outputs["theirs", name]) for name in block_names(ours.config)]


def compare_blocks(ours, theirs, x, t, context, added=None):
    """[(block, max |minunet - diffusers|, max |diffusers|)] in forward order."""
    return [(name, float((a - b).abs().max()), float(b.abs().max()))
            for name, a, b in capture_blocks(ours, theirs, x, t, context, added)]


def format_rows(rows):
    """The per-block table the `parity` command prints."""
    lines = [f"{'block':<16} {'max |minunet - diffusers|':>26} {'max |diffusers|':>16}"]
    lines += [f"{name:<16} {diff:26.3e} {ref:16.3e}" for name, diff, ref in rows]
    worst = max(d / max(r, 1e-12) for _, d, r in rows)
    lines.append(f"largest difference relative to the block's output scale: {worst:.2e}")
    return "\n".join(lines)


def diffusers_twin(source, unet):
    """diffusers' UNet2DConditionModel loaded by diffusers' own loader from the same source (an independent
    reading of the file), or built from minunet's config and state dict for in-memory models."""
    from diffusers import UNet2DConditionModel

    path = Path(str(source)) if source is not None else None
    if path is not None and path.is_dir():
        sub = "unet" if (path / "unet").is_dir() else None
        return UNet2DConditionModel.from_pretrained(path, subfolder=sub, torch_dtype=unet.dtype).eval()
    if path is not None and path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "unet").mkdir()
            (Path(tmp) / "unet" / "config.json").write_text(json.dumps(to_diffusers(unet.config)))
            return UNet2DConditionModel.from_single_file(str(path), config=tmp, subfolder="unet",
                                                         local_files_only=True, torch_dtype=unet.dtype).eval()
    model = UNet2DConditionModel(**to_diffusers(unet.config)).to(unet.dtype).eval()
    model.load_state_dict(unet.state_dict(), strict=True)
    return model


def random_inputs(cfg, size=(32, 32), batch=1, seed=0, dtype=torch.float32, device="cpu", *, tokens=77,
                  timesteps=None):
    """(x, t, context, added) for a UNet of config cfg: latents (batch, in, *size), timesteps (default 500 each),
    text tokens, and for SDXL pooled text + size ids (different per sample). added is None without SDXL ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *size, generator=g)
    ctx = torch.randn(batch, tokens, cfg.context_dim, generator=g)
    t = torch.tensor(timesteps if timesteps is not None else [500.0] * batch, device=device)
    added = None
    if cfg.adm_in_channels is not None:
        n_ids = (cfg.adm_in_channels - 1280) // cfg.addition_time_embed_dim
        ids = [1024.0, 768.0, 0.0, 16.0, 1024.0, 1024.0] if n_ids == 6 else [1024.0, 768.0, 0.0, 16.0, 6.0]
        added = {"text_embeds": torch.randn(batch, 1280, generator=g).to(device, dtype),
                 "time_ids": torch.tensor([[v + 512.0 * i for v in ids] for i in range(batch)]).to(device, dtype)}
    return x.to(device, dtype), t, ctx.to(device, dtype), added
