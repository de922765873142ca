"""Random weights where every parameter matters: the tiny models' initialisation and the parity tests'.

A default initialisation leaves layers at zero (diffusers zero-inits conv_out, proj_out, temporal convs, ...) or
at exactly 1 / 0 (norms), so a mapping mistake in such a tensor would not change the output. Here every one is
drawn: matrices ~ N(0, 1/fan_in) (attention's to_q and to_k times qk_scale, so that attention is far from
uniform), norm scales ~ 1 + N(0, 0.2^2), biases ~ N(0, 0.2^2).
"""
import math

import torch


@torch.no_grad()
def randomize_(module, seed=0, *, qk_scale=1.0, generator=None):
    """Re-draw every parameter of `module` in place (in sorted name order, from `generator` or a fresh one
    seeded with `seed`); returns the module."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        if p.ndim >= 2:
            scale = qk_scale if (".to_q." in name or ".to_k." in name) else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
        elif name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module
