"""The pipelines' argument checks (Pipeline.__call__'s, all before anything runs) and the output check that stops a
run on NaN / Inf, built from the value checks of minunet.checks."""
from pathlib import Path

import torch

from ..checks import integer, number, short
from ..errors import NonFiniteError
from ..noise import check_generators
from ..schedulers.samplers import check_callback, check_generator


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
        raise TypeError(f"{name} must be a str or a list of str, got {short(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be an empty list")
    return value


def latents(value, shape):
    """None or a finite float tensor of exactly `shape` (batch, channels, height / 8, width / 8)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"latents must be a float tensor, got {short(value)}")
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
                    f"{short(value)}")


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


def strength(value, has_image):
    """None (the default), or a number in (0, 1] and only together with an image."""
    if value is None:
        return None
    if not has_image:
        raise ValueError(f"strength={value!r} is used only with image= (img2img); pass an image or drop strength")
    return number("strength", value, 0, 1, low_open=True)


def steps(value):
    return integer("num_inference_steps", value, 1)


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
        advice = ("" if cause is None else f" {cause}") + (  # a huge guidance_scale is named in half precision too
                  f" It runs in {str(dtype).removeprefix('torch.')}, which overflows in some models: load it with "
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
    gen = check_generator(a["generator"])
    check_callback(a["callback"])
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
        raise ValueError(f"{name} must be a pair (height, width) or (top, left) of ints, got {short(value)}")
    return tuple(integer(f"{name}[{i}]", v, minimum) for i, v in enumerate(value))


class finite_calls:
    """fn wrapped so that every output is checked for NaN / Inf (finite_output, one isfinite pass per step): a
    model with a NaN weight stops at its first step with the weight named, and latents that overflow later
    (a huge guidance scale) stop where they do, with `cause` saying why, instead of sampling on to a black image."""

    def __init__(self, fn, component, dtype, module=None, cause=None):
        self.fn, self.component, self.dtype, self.module, self.cause = fn, component, dtype, module, cause

    def __call__(self, *args, **kwargs):
        return finite_output(self.fn(*args, **kwargs), self.component, self.dtype, self.module, self.cause)
