"""FreeU (Si et al., CVPR 2024, arXiv 2309.11497): re-weight the decoder's two inputs at inference time.

At an early decoder resnet, whose input is `torch.cat([h, hs], dim=1)` (backbone h coming up, skip hs from the
encoder), FreeU amplifies the first half of h's channels by b and scales the lowest spatial frequencies of hs by s:

    out = cat([h[:, :C//2] * factor(b), h[:, C//2:], fourier_filter(hs, 1, s)], dim=1)

version 1: factor = b.  version 2 (paper eqs. 3-4): factor = 1 + (b - 1) * m, m = channel mean of h min-max
normalised to [0, 1] per sample.  Which resnets get (b1, s1) or (b2, s2) is the `mapping` (see FreeU.stage).

The filter is the FFT mask of the reference written as the real linear map it is (no FFT, no complex numbers):
fourier_filter below. The fused GPU version of `freeu_concat` is minunet.kernels.freeu_concat.
A model resolves its FreeU into a per-resnet plan once (FreeU.plan, FreeUMixin); each up block hands its resnets'
Stage to decoder_input where it concatenates.
"""
import functools
import math
import numbers
import operator
from dataclasses import dataclass

import torch

from . import kernels

MAPPINGS = ("official", "diffusers")


@dataclass(frozen=True, kw_only=True)
class FreeU:
    """FreeU factors: s1, s2 scale the skips' low frequencies; b1, b2 amplify the backbone (stage 1, stage 2).

    mapping "official": stage by the backbone width entering the resnet: 4 x model channels -> 1, 2 x -> 2
    (official code, ComfyUI, Forge, Fooocus, A1111).  "diffusers": every resnet of up block 0 -> 1, of up block 1
    -> 2 (diffusers' enable_freeu, InvokeAI).  Any factor, 0.0 included, is applied as given.
    """
    s1: float
    s2: float
    b1: float
    b2: float
    mapping: str = "official"
    version: int = 1

    def __post_init__(self):
        for f in ("s1", "s2", "b1", "b2"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"FreeU: {f} must be a finite number, got {value!r}")
            object.__setattr__(self, f, float(value))
        if self.mapping not in MAPPINGS:
            raise ValueError(f"FreeU: mapping must be one of {MAPPINGS}, got {self.mapping!r}")
        if self.version not in (1, 2):
            raise ValueError(f"FreeU: version must be 1 (plain b) or 2 (structure-adaptive b), got {self.version!r}")

    @classmethod
    def preset(cls, name):
        """The published factors for `name`, with the version and mapping they were tuned for (list_presets())."""
        if name not in PRESETS:
            raise KeyError(f"FreeU: no preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name][0]

    def stage(self, up_block, channels, model_channels):
        """1, 2 or None for a resnet of up block `up_block` whose backbone input has `channels` channels."""
        if self.mapping == "diffusers":
            return {0: 1, 1: 2}.get(up_block)
        return {4 * model_channels: 1, 2 * model_channels: 2}.get(channels)

    def at(self, stage):
        """The Stage (b, s, version) applied by stage 1 or 2; None for None."""
        if stage is None:
            return None
        return Stage(self.b1, self.s1, self.version) if stage == 1 else Stage(self.b2, self.s2, self.version)

    def plan(self, widths, model_channels):
        """What each decoder resnet applies: widths[i][j] is the backbone width entering resnet j of up block i;
        returns the same nesting of Stage | None (the table the README prints)."""
        return [[self.at(self.stage(i, c, model_channels)) for c in block] for i, block in enumerate(widths)]


@dataclass(frozen=True)
class Stage:
    """FreeU at one decoder resnet: backbone's first half amplified by b (version 1 or 2), skip's low frequencies
    scaled by s."""
    b: float
    s: float
    version: int = 1


def decoder_input(h, hs, stage):
    """The input of one decoder resnet: cat([h, hs], 1), with FreeU applied when `stage` is a Stage.
    (B, C, H, W), (B, C_skip, H, W) -> (B, C + C_skip, H, W)."""
    if stage is None:
        return torch.cat([h, hs], dim=1)
    # the fused kernel (fp32 maths, no backward) serves CUDA inference; the torch path everything else
    grad = torch.is_grad_enabled() and (h.requires_grad or hs.requires_grad)
    if h.is_cuda and h.dtype != torch.float64 and kernels.available() and not grad:
        return fused_freeu_concat(h, hs, b=stage.b, s=stage.s, version=stage.version)
    return freeu_concat(h, hs, b=stage.b, s=stage.s, version=stage.version)


class FreeUMixin:
    """enable_freeu / disable_freeu and the `freeu` setting for a model whose up blocks read `self.freeu_plan`.
    Setting `freeu` works the plan out once; a model with its own stage rule overrides `_freeu_plan`. The model's
    __init__ sets `self.freeu = None`."""

    @property
    def freeu(self):
        return self._freeu

    @freeu.setter
    def freeu(self, value):
        if value is not None and not isinstance(value, FreeU):
            raise TypeError(f"freeu must be a FreeU or None, got {type(value).__name__}")
        self.freeu_plan = None if value is None else self._freeu_plan(value)  # [up block][resnet] -> Stage | None
        self._freeu = value

    def _freeu_plan(self, freeu):
        return freeu.plan(self.decoder_widths(), self.config.block_out_channels[0])

    def enable_freeu(self, s1, s2=None, b1=None, b2=None, *, mapping="official", version=1):
        """Turn FreeU on in the decoder: enable_freeu(s1, s2, b1, b2) as diffusers' (mapping="diffusers",
        version=1 reproduces it exactly), or enable_freeu(FreeU.preset("sdxl")); `model.freeu = FreeU(...)` is the
        same. Every factor is applied as given, 0.0 included."""
        if isinstance(s1, FreeU):
            if (s2, b1, b2) != (None, None, None):
                raise TypeError("enable_freeu: pass either a FreeU or the factors s1, s2, b1, b2, not both")
            self.freeu = s1
        else:
            self.freeu = FreeU(s1=s1, s2=s2, b1=b1, b2=b2, mapping=mapping, version=version)
        return self

    def disable_freeu(self):
        self.freeu = None
        return self


def freeu_concat(h, hs, *, b, s, version=1):
    """Pure-torch FreeU decoder input: (B, C, H, W), (B, C_skip, H, W) -> (B, C + C_skip, H, W). Out of place."""
    half = h.shape[1] // 2
    factor = b if version == 1 else 1 + (b - 1) * structure_map(h)   # float, or (B, 1, H, W) in fp32
    scaled = (h[:, :half] * factor).to(h.dtype)                      # fp16 x fp32 map multiplies in fp32
    return torch.cat([scaled, h[:, half:], fourier_filter(hs, 1, s)], dim=1)


def fused_freeu_concat(h, hs, *, b, s, version=1):
    """freeu_concat through the Triton kernel (minunet.kernels); version 2's map from the kernel's channel mean."""
    weight = normalise_map(kernels.channel_mean(h)) if version == 2 else None
    return kernels.freeu_concat(h, hs, b=b, s=s, weight=weight)


def structure_map(h):
    """Version 2's per-pixel weight: channel mean of h, min-max normalised per sample. (B, C, H, W) -> (B, 1, H, W)."""
    acc = torch.promote_types(h.dtype, torch.float32)                # FreeU accumulates in fp32
    return normalise_map(h.mean(dim=1, keepdim=True, dtype=acc))


def normalise_map(m):
    """(B, 1, H, W) channel-mean map -> (m - min) / (max - min) per sample, in [0, 1]."""
    lo = m.amin(dim=(2, 3), keepdim=True)
    span = m.amax(dim=(2, 3), keepdim=True) - lo
    # The public code divides by (max - min) with no epsilon, so a constant map (a 1 x 1 latent, a constant
    # feature) gives 0/0 = NaN. A constant map has no structure to follow: take m = 0 there (factor 1, backbone
    # unchanged), the eps -> 0 limit of adding an epsilon; every other map is left exactly as the public code has it.
    return (m - lo) / torch.where(span > 0, span, torch.ones_like(span))


def fourier_filter(x, threshold, scale):
    """Scale the centred (2t x 2t) block of x's 2-D spectrum by `scale`: diffusers' / the official `fourier_filter`
    (fftn, fftshift, mask, ifftshift, ifftn, .real) computed exactly, without FFT or complex numbers.

    With X = DFT(x) and S the masked set of frequencies (k, l), the reference returns
        y = x - (1 - s) * Re(IDFT(1_S X)) = x - (1 - s) / (H W) * sum over (k, l) in S of (A_kl cos + B_kl sin)(phi_kl)
    where phi_kl(m, n) = 2 pi (k m / H + l n / W), A_kl = <x, cos phi_kl> and B_kl = <x, sin phi_kl> (because
    X[k, l] = A - iB and Re((A - iB) e^{i phi}) = A cos phi + B sin phi). So with the rows of `basis` being those
    cosines and sines, y = x - (1 - s) / (H W) * (x basis^T) basis: two thin matmuls, O(|S| H W) per plane.
    For t = 1, S = {0, -1} x {0, -1} (4 bins, 7 non-zero rows), which for H, W >= 3 reads
        y = x - (1 - s) * (mean(x) + (P01 + P10 + P11)(x) / 2),   Pkl: projection onto the real (k, l) harmonic.
    Any H, W >= 1 and any t (where H < 2t, S is what the reference's wrapped slice masks). (..., H, W) -> same shape
    and dtype; fp16 / bf16 accumulate in fp32.
    """
    threshold = operator.index(threshold)
    H, W = x.shape[-2:]
    acc = torch.promote_types(x.dtype, torch.float32)               # FreeU filter accumulates in fp32
    basis = _masked_basis(H, W, threshold, acc, x.device)            # (J, H W)
    xf = x.reshape(-1, H * W).to(acc)                                # (N, H W): one row per plane
    y = torch.addmm(xf, xf @ basis.T, basis, alpha=-(1 - scale) / (H * W))   # (N, J) coefficients, expanded back
    return y.to(x.dtype).reshape(x.shape)


def _masked_freqs(n, threshold):
    """The natural DFT frequencies the reference masks on an axis of size n.

    It masks the fftshift-ed positions range(n)[n//2 - t : n//2 + t] (Python slicing: a negative start wraps once,
    the stop clips); position j holds frequency (j - n//2) mod n. For t = 1 that is {-1, 0} (as n - 1 and 0), with
    n = 2 giving {1, 0} (the Nyquist bin, so a 2 x 2 plane becomes s x) and n = 1 giving {0}.
    """
    centre = n // 2
    return [(j - centre) % n for j in range(n)[centre - threshold:centre + threshold]]


def _masked_basis(H, W, threshold, dtype, device):
    """Rows cos(phi_kl), then sin(phi_kl), over the masked bins (k, l), flattened over (H, W): (J, H W).
    A bin equal to its own conjugate (2k = 0 mod H and 2l = 0 mod W: DC, Nyquist) has sin = 0: its row is left out."""
    if torch.compiler.is_compiling():  # a constant of the compiled graph; eagerly, built once per size and device
        return _build_basis(H, W, threshold, dtype, device)
    return _cached_basis(H, W, threshold, dtype, device)


def _build_basis(H, W, threshold, dtype, device):
    bins = [(k, l) for k in _masked_freqs(H, threshold) for l in _masked_freqs(W, threshold)]
    k = torch.tensor([b[0] for b in bins], dtype=torch.int64, device=device)[:, None, None]
    l = torch.tensor([b[1] for b in bins], dtype=torch.int64, device=device)[:, None, None]
    m = torch.arange(H, device=device)[:, None]
    n = torch.arange(W, device=device)
    phase = (k * m % H) * W + (l * n % W) * H                         # (bins, H, W), exact, in units of 2 pi / (H W)
    angle = (phase.to(dtype) * (2 * math.pi / (H * W))).reshape(len(bins), H * W)
    odd = [i for i, (a, b) in enumerate(bins) if (2 * a) % H or (2 * b) % W]
    return torch.cat([angle.cos(), angle[odd].sin()])


_cached_basis = functools.lru_cache(maxsize=64)(_build_basis)


# Published factors, with the math (version) and stage rule (mapping) each was tuned for.
PRESETS = {
    "sd14": (FreeU(b1=1.3, b2=1.4, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd14-v1": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2), "official README, first release (V1 era)"),
    "sd15": (FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd21": (FreeU(b1=1.4, b2=1.6, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sd21-v1": (FreeU(b1=1.1, b2=1.2, s1=0.9, s2=0.2), "official README, first release (V1 era)"),
    "sdxl": (FreeU(b1=1.3, b2=1.4, s1=0.9, s2=0.2, version=2), "official README (V2 era)"),
    "sdxl-sweep": (FreeU(b1=1.1, b2=1.2, s1=0.6, s2=0.4, mapping="diffusers"),
                   "community sweep quoted by the diffusers docs"),
    "video": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2), "FreeU video code (ModelScope / zeroscope)"),
    "sd15-diffusers": (FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2, mapping="diffusers"), "diffusers guide, SD 1.4 / 1.5"),
    "sd21-diffusers": (FreeU(b1=1.1, b2=1.2, s1=0.9, s2=0.2, mapping="diffusers"), "diffusers guide, SD 2.1"),
}


def list_presets():
    """The preset table as Markdown (README.md carries a copy; a test keeps the two equal)."""
    rows = ["| preset | b1 | b2 | s1 | s2 | version | mapping | source |", "|---|---|---|---|---|---|---|---|"]
    for name, (f, source) in PRESETS.items():
        rows.append(f"| `{name}` | {f.b1} | {f.b2} | {f.s1} | {f.s2} | {f.version} | {f.mapping} | {source} |")
    return "\n".join(rows)
