"""Inpainting: images and masks in, the two ways a UNet repaints, and the overlay that keeps the rest exactly.

Same conventions and numbers as diffusers 0.42's StableDiffusion[XL]InpaintPipeline (its VaeImageProcessor and
mask processor), written anew:
- A mask is white (1) where the image is repainted and black (0) where it is kept. It is resized to the output
  size (PIL: lanczos, then grayscale; tensors and arrays: nearest) and binarised at 0.5, so inside the loop even
  a blurred mask is hard 0/1: blurring only moves its 0.5 line (`blur` below is PIL's GaussianBlur, which users
  apply by hand). A soft edge survives only in the final overlay of `padding_mask_crop`.
- The image goes to [-1, 1] at the output size (PIL: lanczos; tensors and arrays in [0, 1]: nearest).
- `masked_image = image * (mask < 0.5)`: repainted pixels set to 0 (mid-grey), encoded by the VAE for a 9-channel UNet.
- 9-channel UNets (the inpainting checkpoints) see `cat([scaled latents, mask, masked-image latents])` at latent
  size (mask by nearest interpolation, raw 0/1): `unet_input`.
- 4-channel UNets (any checkpoint) repaint by blending after each step: the kept region is the image latents
  noised to the next step with the run's own starting noise, and the clean image latents after the last: `blend`,
  run as a step callback of the sampler (`InpaintRun.blend_step`).
- `padding_mask_crop=p`: only the box around the mask (grown by p pixels, widened to the output's aspect ratio,
  kept inside the image; `crop_region`) is generated, at the output size ("fill" resizing: `resize_fill`); the
  result is resized back, pasted, and the original is composited on top with alpha = 1 - mask (`overlay`), so
  every pixel where the mask is black is the original's exactly.
Deliberate differences: uint8 arrays/tensors are read as 0..255 (diffusers binarises them raw, so any grey above
0 repaints); a [-1, 1] image tensor is an error here (diffusers guesses from its minimum); PIL images are
converted to RGB (diffusers keeps RGBA / L and fails later); an all-black mask with padding_mask_crop is an
error (diffusers computes an empty or inverted box).
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps


LANCZOS = Image.Resampling.LANCZOS


# ---- inputs ------------------------------------------------------------------------------------------------
def prepare_image(image, height, width, box=None, fill=False):
    """PIL image(s), a (C, H, W) / (B, C, H, W) tensor or a (H, W, C) / (B, H, W, C) array in [0, 1]
    -> (B, 3, height, width) float32 in [-1, 1]. A 4-channel tensor is taken as latents and returned as it is."""
    if isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[1] == 4:
        return image
    if _is_pil(image):
        ims = [_resized(im, height, width, box, fill).convert("RGB") for im in _as_list(image)]
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ims])).permute(0, 3, 1, 2)
    else:
        x = _unit_tensor(image, "image")
        if x.ndim == 3:
            x = x[None] if isinstance(image, torch.Tensor) else x.permute(2, 0, 1)[None]
        elif not isinstance(image, torch.Tensor):
            x = x.permute(0, 3, 1, 2)  # arrays are channels-last
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"image: expected (B, 3, H, W) tensors or (B, H, W, 3) arrays, found shape "
                             f"{tuple(np.shape(image))}")
        x = F.interpolate(x.expand(-1, 3, -1, -1), size=(height, width))  # nearest, as diffusers
    return 2.0 * x.contiguous() - 1.0


def prepare_mask(mask, height, width, box=None, fill=False):
    """PIL mask(s), a (H, W) / (B, H, W) / (B, 1, H, W) tensor or a (H, W) / (B, H, W) / (B, H, W, 1) array in
    [0, 1] -> (B, 1, height, width) float32 of 0 (keep) and 1 (repaint), binarised at 0.5."""
    if _is_pil(mask):
        ims = [_resized(im, height, width, box, fill).convert("L") for im in _as_list(mask)]
        m = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ims]))[:, None]
    else:
        m = _unit_tensor(mask, "mask_image")
        if not isinstance(mask, torch.Tensor) and m.ndim >= 3 and m.shape[-1] == 1:
            m = m[..., 0]  # channels-last arrays: (H, W, 1) / (B, H, W, 1)
        m = m.reshape(-1, *m.shape[-2:])[:, None] if m.ndim in (2, 3) else m
        if m.ndim != 4 or m.shape[1] != 1:
            raise ValueError(f"mask_image: expected (H, W), (B, H, W) or (B, 1, H, W), found shape "
                             f"{tuple(np.shape(mask))}")
        m = F.interpolate(m, size=(height, width))  # nearest, as diffusers
    return (m >= 0.5).float()


def latent_mask(mask, scale):
    """(B, 1, H, W) pixel mask -> (B, 1, H/scale, W/scale) by nearest interpolation, as diffusers."""
    return F.interpolate(mask, size=(mask.shape[2] // scale, mask.shape[3] // scale))


def masked_image(pixels, mask):
    """The image the 9-channel UNet's third input encodes: repainted pixels set to 0 (mid-grey in [-1, 1])."""
    return pixels * (mask < 0.5)


def blur(mask, radius=4):
    """A soft mask edge (PIL GaussianBlur, diffusers' mask_processor.blur)."""
    return mask.filter(ImageFilter.GaussianBlur(radius))


def pil_size(image):
    """(width, height) of a PIL image or the first of a list, else None."""
    return _as_list(image)[0].size if _is_pil(image) else None


def _is_pil(x):
    return isinstance(x, Image.Image) or (isinstance(x, (list, tuple)) and len(x) > 0
                                          and all(isinstance(i, Image.Image) for i in x))


def _as_list(x):
    return [x] if isinstance(x, Image.Image) else list(x)


def _unit_tensor(x, name):
    """A tensor, an array or a list of them -> float32 tensor in [0, 1] (uint8 read as 0..255)."""
    if isinstance(x, (list, tuple)):
        parts = [_unit_tensor(i, name) for i in x]
        return torch.cat(parts) if parts[0].ndim == 4 else torch.stack(parts)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a PIL image, a torch tensor or a numpy array, found {type(x).__name__}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name}: tensor and array values must be in [0, 1] (uint8: 0..255), found "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


# ---- padding_mask_crop -------------------------------------------------------------------------------------
def crop_region(mask, width, height, pad):
    """(x1, y1, x2, y2): the box of the mask's non-black pixels grown by `pad` (clipped to the image), then
    widened along one axis to the aspect ratio width / height, shifted to stay inside the image.
    Same integer arithmetic as diffusers' VaeImageProcessor.get_crop_region."""
    m = np.asarray(mask.convert("L")) != 0  # any non-black pixel, before binarising, as diffusers
    if not m.any():
        raise ValueError("padding_mask_crop: mask_image has no white pixel, so there is nothing to repaint")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    H, W = m.shape
    x1, x2 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, W)
    y1, y2 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, H)
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:  # too wide: grow the height
        y1, y2 = _widen(y1, y2, (x2 - x1) / target, H)
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * target, W)
    return x1, y1, x2, y2


def _widen(lo, hi, length, size):
    """[lo, hi) grown about its centre to `length` (truncated), shifted back inside [0, size), clipped."""
    grow = int(length - (hi - lo))
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi > size:
        lo, hi = lo - (hi - size), size
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, size)


def _resized(im, height, width, box, fill):
    if box is not None:
        im = im.crop(box)
    return resize_fill(im, width, height) if fill else im.resize((width, height), resample=LANCZOS)


def _fit(src_w, src_h, width, height, cover):
    """Aspect-kept size inside (cover=False) or around (cover=True) a width x height frame, with diffusers'
    integer rounding and its choice at equal ratios."""
    ratio, src = width / height, src_w / src_h
    if (ratio > src) if cover else (ratio < src):
        return width, src_h * width // src_w
    return src_w * height // src_h, height


def resize_fill(im, width, height):
    """Fit inside width x height keeping the aspect ratio, centre it, and fill the two empty bands by stretching
    the edge rows (or columns) of the resized image: diffusers' resize_mode="fill" (same PIL calls)."""
    w, h = _fit(im.width, im.height, width, height, cover=False)
    small = im.resize((w, h), resample=LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(small, box=(width // 2 - w // 2, height // 2 - h // 2))
    ratio, src = width / height, im.width / im.height
    if ratio < src and height // 2 - h // 2 > 0:  # bands above and below, from the first and last rows
        band = height // 2 - h // 2
        out.paste(small.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
        out.paste(small.resize((width, band), box=(0, h, width, h)), box=(0, band + h))
    elif ratio > src and width // 2 - w // 2 > 0:  # bands left and right, from the first and last columns
        band = width // 2 - w // 2
        out.paste(small.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
        out.paste(small.resize((band, height), box=(w, 0, w, height)), box=(band + w, 0))
    return out


def resize_cover(im, width, height):
    """Cover width x height keeping the aspect ratio and centre-crop: diffusers' resize_mode="crop"."""
    w, h = _fit(im.width, im.height, width, height, cover=True)
    out = Image.new("RGB", (width, height))
    out.paste(im.resize((w, h), resample=LANCZOS), box=(width // 2 - w // 2, height // 2 - h // 2))
    return out


def overlay(generated, original, mask, box):
    """The final image of padding_mask_crop: the generated crop resized back into its box of a black canvas the
    original's size, then the original composited on top with alpha = 255 - mask, so black mask pixels give the
    original exactly, white ones the generated image, grey ones a blend (diffusers' apply_overlay)."""
    W, H = original.size
    if mask.size != (W, H):
        raise ValueError(f"mask_image is {mask.size[0]}x{mask.size[1]}, image is {W}x{H}: they must be the same size")
    top = Image.new("RGBa", (W, H))  # premultiplied alpha: where the mask is black, the original's pixels as they are
    top.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    canvas = Image.new("RGBA", (W, H))
    x1, y1, x2, y2 = box
    canvas.paste(resize_cover(generated, x2 - x1, y2 - y1), (x1, y1))
    out = canvas.convert("RGB").convert("RGBA")
    out.alpha_composite(top.convert("RGBA"))
    return out.convert("RGB")


# ---- inside the loop ---------------------------------------------------------------------------------------
def unet_input(x_in, mask, masked_latents):
    """9-channel UNet input: (B, 4 + 1 + 4, h, w) = scaled noisy latents ++ raw 0/1 mask ++ masked-image latents."""
    return torch.cat([x_in, mask.to(x_in.dtype), masked_latents.to(x_in.dtype)], dim=1)


def known_latents(steps, image_latents, noise, i):
    """The kept region's latents at step i of a run: the image latents noised to timesteps[i] with the run's
    starting noise (Steps.add_noise, diffusers' scheduler.add_noise), the clean image latents once i is past the
    last step."""
    return image_latents if i >= len(steps.timesteps) else steps.add_noise(image_latents, noise, i)


def blend(x, mask, known):
    """4-channel inpainting after a step: keep `known` where the mask is 0, the sampler's x where it is 1."""
    return (1 - mask) * known + mask * x


# ---- one run -----------------------------------------------------------------------------------------------
class InpaintRun:
    """What inpainting adds to a run: the latent mask, the masked-image latents (9-channel UNet) or the clean image
    latents and the starting noise (4-channel blend), and the overlay for padding_mask_crop."""

    def __init__(self, mask, masked_latents, image_latents, noise, box=None, original=None, original_mask=None):
        self.mask = mask                        # (B, 1, h, w) 0/1 at latent size: 1 = repaint
        self.masked_latents = masked_latents    # (B, 4, h, w) scaled, or None for a 4-channel UNet
        self.image_latents = image_latents      # (B, 4, h, w) scaled clean image latents, or None
        self.noise = noise                      # (B, 4, h, w) the run's starting noise, also the blend's
        self.box, self.original, self.original_mask = box, original, original_mask

    def unet_input(self, x_in):
        """The UNet's input for the (k * B, 4, h, w) scaled latents (k = 2 with guidance: [uncond; cond]):
        9 channels, or x_in as it is for a 4-channel UNet."""
        if self.masked_latents is None:
            return x_in
        copies = x_in.shape[0] // self.mask.shape[0]
        rep = lambda t: t.to(x_in.device).repeat(copies, 1, 1, 1)  # noqa: E731
        return unet_input(x_in, rep(self.mask), rep(self.masked_latents))

    def blend_step(self, steps):
        """A 4-channel UNet's step callback (i, t, latents) -> the latents blended with the kept region at step
        i + 1 (diffusers' convention, as the sampler's callback gets them); None for a 9-channel UNet."""
        if self.masked_latents is not None:
            return None

        def step(i, t, latents):
            known = known_latents(steps, self.image_latents.to(latents.device), self.noise.to(latents.device), i + 1)
            return blend(latents, self.mask.to(latents.device, latents.dtype), known)
        return step

    def finish(self, images):
        """PIL outputs with padding_mask_crop: each pasted back into the original image (`overlay`)."""
        if self.box is None:
            return images
        return [overlay(im, self.original, self.original_mask, self.box) for im in images]


def check_inputs(image, mask_image, padding_mask_crop, output_type, in_channels):
    """Errors for what cannot be inpainted, named by argument (diffusers' checks, and the ones it lacks)."""
    if image is None:
        raise ValueError("mask_image needs image= (the picture to repaint)")
    if in_channels not in (4, 9):
        raise ValueError(f"inpainting needs a UNet with 4 or 9 input channels, this one has {in_channels}")
    w_h = pil_size(image), pil_size(mask_image)
    if None not in w_h and w_h[0] != w_h[1]:
        raise ValueError(f"mask_image is {w_h[1][0]}x{w_h[1][1]}, image is {w_h[0][0]}x{w_h[0][1]}: they must be "
                         "the same size")
    if padding_mask_crop is not None:
        if not isinstance(image, Image.Image) or not isinstance(mask_image, Image.Image):
            raise ValueError("padding_mask_crop needs image and mask_image as single PIL images, found "
                             f"{type(image).__name__} and {type(mask_image).__name__}")
        if output_type != "pil":
            raise ValueError(f"padding_mask_crop pastes into the original PIL image: output_type must be 'pil', "
                             f"found {output_type!r}")
        if not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
            raise ValueError(f"padding_mask_crop={padding_mask_crop!r} must be an int >= 0 (pixels)")


def prepare_inputs(image, mask_image, height, width, padding_mask_crop=None):
    """(pixels in [-1, 1] or given latents, pixel mask 0/1, crop box or None), as diffusers preprocesses them."""
    box = None
    if padding_mask_crop is not None:
        box = crop_region(mask_image, width, height, padding_mask_crop)
    fill = box is not None
    return prepare_image(image, height, width, box, fill), prepare_mask(mask_image, height, width, box, fill), box
