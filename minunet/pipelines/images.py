"""Decoded tensors <-> PIL images, with diffusers' conventions (VaeImageProcessor.postprocess / preprocess)."""
import numpy as np
import torch
from PIL import Image


def to_pil(x):
    """(B, C, H, W) images in [-1, 1] (C = 3, or 1 for grayscale) -> list of B PIL images.
    Same rounding as diffusers: (x * 0.5 + 0.5).clamp(0, 1) in x's dtype, then float32 * 255, rounded to uint8."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"to_pil expects (B, 3, H, W) or (B, 1, H, W) images, got shape {tuple(x.shape)}")
    x = (x.detach() * 0.5 + 0.5).clamp(0, 1)
    arr = x.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, C)
    arr = (arr * 255).round().astype("uint8")
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]


def from_pil(images):
    """A PIL image or a list of same-size PIL images -> (B, 3, H, W) float32 tensor in [-1, 1] (pixel / 255 * 2 - 1).
    Sizes are kept as they are; the VAE wants H and W divisible by its downscale factor (8)."""
    if isinstance(images, Image.Image):
        images = [images]
    arr = np.stack([np.asarray(im.convert("RGB")).astype(np.float32) / 255.0 for im in images])  # (B, H, W, 3)
    return 2.0 * torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() - 1.0
