"""Argument and config-field checks: one function per kind of value, each raising one ValueError / TypeError that
names the argument, the value found and what is allowed. Used at the top of Pipeline.__call__ and by the config
translators (there the name is "file: field"), so that bad input stops before it turns into a black image.
"""
import math
from pathlib import Path

import torch

from .noise import check_generators


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(name, value, minimum=None):
    """An int (not a bool, not a float) >= minimum."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def number(name, value, low=None, high=None, *, low_open=False, high_open=False):
    """A finite int or float within [low, high] (an end is excluded where *_open)."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left, right = ("(" if low_open else "[") if low is not None else "(", ")" if high_open or high is None else "]"
        raise ValueError(f"{name} must be in {left}{'-inf' if low is None else low}, "
                         f"{'inf' if high is None else high}{right}, got {value}")
    return value


def int_tuple(name, value, minimum=1, length=None):
    """A list / tuple of ints >= minimum (of `length` entries when given) -> tuple."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of ints, got {value!r} ({type(value).__name__})")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries (one per level), got {len(value)}: {list(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, v in enumerate(value):
        integer(f"{name}[{i}]", v, minimum)
    return tuple(value)


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def divisible(name, value, by, by_name):
    if value % by:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def device(name, value):
    """None, or a device that exists on this machine -> torch.device. A missing CUDA / MPS is one named
    RuntimeError here, before any file is read, instead of torch's AssertionError from deep in a load."""
    if value is None:
        return None
    try:
        d = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name}={value!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{name}={value!r}: CUDA is not available on this machine (torch.cuda.is_available() is "
                           "False: no GPU, or a CPU-only torch); use device='cpu'")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise RuntimeError(f"{name}={value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{name}={value!r}: MPS is not available on this machine; use device='cpu'")
    return d


# ---- pipeline arguments ----------------------------------------------------------------------------------------

def size(name, value, multiple):
    """None (the model's default) or a positive multiple of `multiple` (the VAE factor): diffusers' rule. The
    UNet takes any latent size, odd ones included (a 48 px side is 6 -> 3 -> 2 -> 1 latents on SD 1.5)."""
    if value is None:
        return None
    integer(name, value)
    if value <= 0 or value % multiple:
        raise ValueError(f"{name}={value} must be a positive multiple of {multiple} (the VAE's factor)")
    return value


class TooLargeError(ValueError):
    """A size whose run would need more memory than the device has: refused before any work."""


def memory_fits(height, width, batch, pipe, decode=True):
    """Refuse (TooLargeError) a size that cannot fit the device's memory, before any work. Lower bounds, about three
    live tensors at the largest activation: the UNet's first level (C0 channels, batch doubled by guidance) and
    the VAE decoder's last level (its full-size width, 128 in every SD VAE). Any such run dies in the allocator."""
    f, c_unet, c_vae = pipe.vae_scale, pipe.unet.config.block_out_channels[0], pipe.vae.config.block_out_channels[0]
    unet = 3 * 2 * batch * c_unet * (height // f) * (width // f) * _bytes(pipe.unet.dtype)
    vae = 3 * batch * c_vae * height * width * _bytes(pipe.vae.dtype) if decode else 0
    have = device_memory(pipe.device)
    if have is not None and max(unet, vae) > have:
        what = "the VAE decode" if vae > unet else "the UNet"
        raise TooLargeError(f"height={height}, width={width} (batch {batch}): {what} alone would need about "
                            f"{max(unet, vae) / 2**30:,.0f} GiB, more than the {have / 2**30:,.0f} GiB of "
                            f"{pipe.device}; choose a smaller size")


def _bytes(dtype):
    return torch.finfo(dtype).bits // 8


def device_memory(device):
    """Total memory of `device` in bytes (CPU: physical RAM), None where unknown."""
    import os

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def prompt(name, value, optional=False):
    """A str or a non-empty list of str (None where optional)."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{name} must be a str or a list of str, got {_short(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be an empty list")
    return value


def generator(value):
    """None, a torch.Generator, or a non-empty list of them."""
    if value is None or isinstance(value, torch.Generator):
        return value
    if isinstance(value, (list, tuple)) and value:
        for i, g in enumerate(value):
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generator[{i}] must be a torch.Generator, got {_short(g)}")
        return value
    raise TypeError(f"generator must be None, a torch.Generator or a list of them (one per sample), got "
                    f"{_short(value)}; e.g. torch.Generator().manual_seed(0)")


def latents(value, shape):
    """None or a finite float tensor of exactly `shape` (batch, channels, height / 8, width / 8)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"latents must be a float tensor, got {_short(value)}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"latents have shape {list(value.shape)}; expected {list(shape)} (batch = prompts x "
                         "num_images_per_prompt, the UNet's channels, height / 8, width / 8)")
    if not torch.isfinite(value).all():
        raise ValueError("latents contain NaN or Inf values")
    return value


def image(value):
    """None, a PIL image, a list of PIL images, a path to an image file (opened with PIL), a numpy array
    (H, W, 3) / (B, H, W, 3) in [0, 1], or a tensor (B, 3, H, W) in [0, 1] (or (B, 4, h, w) latents) -> what
    the pipeline takes: PIL image(s) or a 4-d tensor."""
    from PIL import Image

    if value is None or isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, Path)):
        try:
            with Image.open(value) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"image={str(value)!r}: not an image file PIL can open ({e})") from None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Image.Image) for v in value):
        if len({v.size for v in value}) != 1:
            raise ValueError(f"image: a list of PIL images must all have one size, got {[v.size for v in value]}")
        return list(value)
    if type(value).__module__ == "numpy" and hasattr(value, "ndim"):
        if value.ndim not in (3, 4) or value.shape[-1] != 3:
            raise ValueError(f"image: a numpy array must be (H, W, 3) or (B, H, W, 3), got {value.shape}")
        value = torch.from_numpy(value.reshape(-1, *value.shape[-3:])).permute(0, 3, 1, 2).float()
    if isinstance(value, torch.Tensor):
        return _image_tensor(value)
    raise TypeError(f"image must be a PIL image, a list of them, a path, a numpy array or a tensor, got "
                    f"{_short(value)}")


def _image_tensor(value):
    if value.ndim == 3:
        value = value[None]
    if value.ndim != 4 or value.shape[1] not in (3, 4) or not value.is_floating_point():
        raise ValueError(f"image: a tensor must be float (B, 3, H, W) pixels in [0, 1] or (B, 4, h, w) latents, "
                         f"got {value.dtype} {list(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError("image contains NaN or Inf values")
    if value.shape[1] == 3 and (value.min() < 0 or value.max() > 1):
        raise ValueError(f"image: pixel tensors must be in [0, 1], got values in [{float(value.min()):.3g}, "
                         f"{float(value.max()):.3g}]")
    return value


def callback(value):
    if value is not None and not callable(value):
        raise TypeError(f"callback must be None or a callable (i, t, latents), got {_short(value)}")
    return value


def strength(value, has_image):
    """None (the default), or a number in (0, 1] and only together with an image."""
    if value is None:
        return None
    if not has_image:
        raise ValueError(f"strength={value!r} is used only with image= (img2img); pass an image or drop strength")
    return number("strength", value, 0, 1, low_open=True)


def steps(value):
    return integer("num_inference_steps", value, 1)


def _short(value):
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


# ---- outputs -------------------------------------------------------------------------------------------------

class NonFiniteError(RuntimeError):
    """A model produced NaN or Inf (A1111's NansException): a black image is never returned instead."""


def finite_output(x, component, dtype, module=None, cause=None):
    """Raise NonFiniteError naming `component` when x holds NaN / Inf, with its cause where it can be told: a
    weight of `module` that holds NaN / Inf (named), half precision, or `cause` (the caller's word on the inputs,
    e.g. the guidance scale that made the latents overflow)."""
    if torch.isfinite(x).all():
        return x
    bad = int((~torch.isfinite(x)).sum())
    weight = None if module is None else nonfinite_parameter(module)
    if weight is not None:
        advice = (f" Its weight {weight} holds NaN / Inf: the file is damaged (`minunet inspect --check-values "
                  "FILE` lists every such tensor).")
    elif dtype in (torch.float16, torch.bfloat16):
        advice = (f" It runs in {str(dtype).removeprefix('torch.')}, which overflows in some models: load it with "
                  "dtype=torch.float32" + (" or keep the VAE's force_upcast=True" if component == "VAE" else "") + ".")
    elif cause is not None:
        advice = f" {cause}"
    elif module is not None:
        advice = " Its weights are finite: its input was out of range."
    else:
        advice = " Its weights may hold NaN / Inf: check them with `minunet inspect --check-values FILE`."
    raise NonFiniteError(f"the {component} produced {bad} NaN / Inf values out of {x.numel()}.{advice}")


def nonfinite_parameter(module):
    """The name of the first floating parameter or buffer of `module` holding NaN / Inf, or None."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


# ---- all of Pipeline.__call__'s arguments ----------------------------------------------------------------------

def pipeline_arguments(pipe, a):
    """Check the arguments of Pipeline.__call__ (`a`: its locals() at the top) before anything runs -> the image
    in a form the pipeline takes (a path is opened, an array becomes a tensor)."""
    for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2"):
        prompt(name, a[name], optional=name != "prompt")
    for name in ("height", "width"):
        size(name, a[name], pipe.vae_scale)
    steps(a["num_inference_steps"])
    integer("num_images_per_prompt", a["num_images_per_prompt"], 1)
    if a["guidance_scale"] is not None:
        number("guidance_scale", a["guidance_scale"])
    number("guidance_rescale", a["guidance_rescale"], 0, 1)
    number("eta", a["eta"], 0)
    for name in ("aesthetic_score", "negative_aesthetic_score"):
        number(name, a[name])
    for name in ("original_size", "target_size", "crops_coords_top_left"):
        if a[name] is not None:
            pair(name, a[name], minimum=0 if name == "crops_coords_top_left" else 1)
    gen = generator(a["generator"])
    callback(a["callback"])
    img = image(a["image"])
    strength(a["strength"], img is not None)
    batch = (1 if isinstance(a["prompt"], str) else len(a["prompt"])) * a["num_images_per_prompt"]
    check_generators(gen, batch)
    h = a["height"] if a["height"] is not None else pipe.default_size
    w = a["width"] if a["width"] is not None else pipe.default_size
    memory_fits(h, w, batch, pipe, decode=a["output_type"] != "latent")
    if a["latents"] is not None:
        if img is not None:
            raise ValueError("latents= and image= were both given: latents start a text-to-image run, image an "
                             "img2img / refiner run; pass one")
        latents(a["latents"], (batch, pipe.unet.config.out_channels, h // pipe.vae_scale, w // pipe.vae_scale))
    return img


def pair(name, value, minimum=0):
    """Two ints >= minimum, e.g. original_size=(1024, 1024)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (height, width) or (top, left) of ints, got {_short(value)}")
    return tuple(integer(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))


class finite_calls:
    """fn wrapped so that every output is checked for NaN / Inf (finite_output, one isfinite pass per step): a
    model with a NaN weight stops at its first step with the weight named, and latents that overflow later
    (a huge guidance scale) stop where they do, with `cause` saying why, instead of sampling on to a black image."""

    def __init__(self, fn, component, dtype, module=None, cause=None):
        self.fn, self.component, self.dtype, self.module, self.cause = fn, component, dtype, module, cause

    def __call__(self, *args, **kwargs):
        return finite_output(self.fn(*args, **kwargs), self.component, self.dtype, self.module, self.cause)
