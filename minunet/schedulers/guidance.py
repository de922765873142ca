"""Classifier-free guidance (Ho & Salimans 2022) with guidance_rescale (Lin et al. 2023), around a model function.

It acts on the UNet's raw output (epsilon or v), not on x0: for those two, guiding x0 would be the same (x0 is
affine in the output), but guidance_rescale matches standard deviations, which is defined on the raw output
(diffusers' rescale_noise_cfg).
"""
import torch


def cfg_combine(uncond, cond, scale, rescale=0.0):
    """uncond + scale * (cond - uncond); with rescale > 0, blended towards the same output with the standard
    deviation of `cond` (Lin et al. 2023, eqs. 15-16), per sample."""
    guided_out = uncond + scale * (cond - uncond)
    if rescale > 0:
        dims = list(range(1, cond.ndim))
        rescaled = guided_out * (cond.std(dim=dims, keepdim=True) / guided_out.std(dim=dims, keepdim=True))
        guided_out = rescale * rescaled + (1 - rescale) * guided_out
    return guided_out


def guided(model_fn, scale, rescale=0.0):
    """model_fn(x_in, t) over a doubled batch [unconditional; conditional] -> a model function of x alone that
    runs both halves in one call and combines them."""
    def fn(x_in, t):
        uncond, cond = model_fn(torch.cat([x_in, x_in]), t).chunk(2)
        return cfg_combine(uncond, cond, scale, rescale)
    return fn
